"""Figures (pure functions: DataFrame → matplotlib Figure), the per-command views and the
self-contained HTML report."""

from ntlab.catalog import FORMATS  # noqa: F401  (re-exported)
from ntlab.errors import NtlabError


def check_format(fmt: str) -> str:
    """The figure format of a run or a report: png (default) or svg."""
    if fmt not in FORMATS:
        raise NtlabError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt
