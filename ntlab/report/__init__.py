"""Figures (pure functions: DataFrame → matplotlib Figure), the per-command views and the
self-contained HTML report."""

from ntlab.errors import NtlabError

FORMATS = ("png", "svg")


def check_format(fmt: str) -> str:
    """The figure format of a run or a report: png (default) or svg."""
    if fmt not in FORMATS:
        raise NtlabError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt
