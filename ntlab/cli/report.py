"""`ntlab report`: render run directories as one self-contained HTML page."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer

from ntlab.cli.common import console, guarded
from ntlab.errors import NtlabError

REPORTS_DIR = Path("reports")


def default_report_path(runs: list[Path]) -> Path:
    """`reports/<run>.html` for one run, `reports/compare-<first>-and-N-more-<time>.html`
    for several."""
    first = re.sub(r"[^A-Za-z0-9._-]+", "-", runs[0].resolve().name) or "run"
    if len(runs) == 1:
        return REPORTS_DIR / f"{first}.html"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return REPORTS_DIR / f"compare-{first}-and-{len(runs) - 1}-more-{stamp}.html"


def report_command(
    runs: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Run directories (the --out folders of ntlab commands); several give a "
            "comparison page.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="The HTML file to write \\[default: reports/<run>.html, or "
            "reports/compare-….html for several runs]."
        ),
    ] = None,
    format: Annotated[str, typer.Option("--format", help="Figures inlined as png or svg.")] = "png",
    title: Annotated[
        str | None, typer.Option(help="Page title \\[default: from the runs].")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the path.")] = False,
) -> None:
    """Render one run (or compare several) as a self-contained HTML page.

    The page inlines its CSS and figures, makes no network request and opens offline or as a
    mail attachment. It shows what was run (command line, config, versions, device,
    duration), the headline numbers, every figure of that command with a caption, and for
    ForkMerge the Λ* of each round and each round's merge-search landscape. Failed or
    unfinished runs render too, with their error and partial tables.
    """
    from ntlab.report import check_format

    with guarded():
        if not runs:
            raise NtlabError(
                "no run directories given; usage: ntlab report RUN_DIR [RUN_DIR …] [--out FILE]"
            )
        check_format(format)
        from ntlab.report.page import write_report

        path = write_report(runs, out or default_report_path(runs), format, title)
    console.print(str(path) if quiet else f"report: {path}", soft_wrap=True, highlight=False)
