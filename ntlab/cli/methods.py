"""`ntlab methods`: every weighting method with one line and its paper."""

from __future__ import annotations

from rich.table import Table

from ntlab.catalog import METHOD_INFO, method_names
from ntlab.cli.common import console


def methods_command() -> None:
    """List every method `train --method` and `compare --methods` accept: its kind, what it
    does in one line, and the paper it comes from."""
    table = Table(title="Methods", title_justify="left")
    for column in ("method", "kind", "what it does", "paper"):
        table.add_column(column, overflow="fold")
    for name in method_names():
        info = METHOD_INFO[name]
        table.add_row(name, info.kind, info.summary, info.paper)
    console.print(table)
