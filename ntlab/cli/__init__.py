"""The `ntlab` command line: thin views on the shared core."""

from __future__ import annotations

import sys

import typer
import typer.core

from ntlab import __version__
from ntlab.cli import analysis as analysis_cli
from ntlab.cli import cache as cache_cli
from ntlab.cli import data as data_cli
from ntlab.cli import forkmerge as forkmerge_cli
from ntlab.cli import maps as maps_cli
from ntlab.cli.affinity import affinity_command
from ntlab.cli.common import err_console, set_origins
from ntlab.cli.compare import compare_command
from ntlab.cli.methods import methods_command
from ntlab.cli.report import report_command
from ntlab.cli.train import train_command


class OneLineErrors(typer.core.TyperGroup):
    """The root command: a usage error (a bad value, a missing option, an unknown choice)
    ends with one line on stderr and exit code 2 (`error: … (see `ntlab train --help`)`),
    instead of click's boxed usage message, whoever calls it (the console script, CliRunner)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[override]
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Exit as exc:
            code = exc.exit_code
        except typer.Abort:
            err_console.print("error: aborted")
            code = 130
        except Exception as exc:
            code = _usage_error(exc)
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _usage_error(exc: Exception) -> int:
    """Print a click usage error in one line; return its exit code (anything else: raise)."""
    if type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None:
        typer.echo(exc.ctx.get_help())
        return 0
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        err_console.print(f"error: {exc.format_message()}{hint}", markup=False)
        return exc.exit_code
    raise exc


app = typer.Typer(
    cls=OneLineErrors,
    name="ntlab",
    help="Analyse negative transfer in auxiliary-task learning, sweep task weights, "
    "train with ForkMerge.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
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
app.command("affinity")(affinity_command)
app.command("report")(report_command)
app.command("methods")(methods_command)


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
    app(prog_name="ntlab")
