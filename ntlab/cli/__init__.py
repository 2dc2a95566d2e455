"""The `ntlab` command line: thin views on the shared core."""

from __future__ import annotations

import sys

import typer

from ntlab import __version__
from ntlab.cli import analysis as analysis_cli
from ntlab.cli import cache as cache_cli
from ntlab.cli import data as data_cli
from ntlab.cli import forkmerge as forkmerge_cli
from ntlab.cli import maps as maps_cli
from ntlab.cli.common import err_console, set_origins
from ntlab.cli.compare import compare_command
from ntlab.cli.report import report_command
from ntlab.cli.train import train_command

app = typer.Typer(
    name="ntlab",
    help="Analyse negative transfer in auxiliary-task learning, sweep task weights, "
    "train with ForkMerge.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.add_typer(data_cli.app, name="data")
app.add_typer(forkmerge_cli.app, name="forkmerge")
app.add_typer(cache_cli.app, name="cache")
app.command("train")(train_command)
app.command("gcs")(analysis_cli.gcs_command)
app.command("csd")(analysis_cli.csd_command)
app.command("tsne")(analysis_cli.tsne_command)
app.command("sweep")(maps_cli.sweep_command)
app.command("pairwise")(maps_cli.pairwise_command)
app.command("ternary")(maps_cli.ternary_command)
app.command("compare")(compare_command)
app.command("report")(report_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ntlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """ntlab: negative transfer, task-weight sweeps and ForkMerge, on one training core."""
    set_origins(None)  # what an earlier invocation in this process resolved is not ours


def main() -> None:
    """Console entry point: usage errors become one line on stderr and exit code 2."""
    try:
        code = app(prog_name="ntlab", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("error: aborted")
        sys.exit(130)
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None:
            typer.echo(exc.ctx.get_help())
            sys.exit(0)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            err_console.print(f"error: {exc.format_message()}{hint}", markup=False)
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
