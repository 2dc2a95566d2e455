"""Helpers the analyses share: λ grids and checks of their inputs."""

from __future__ import annotations

from collections.abc import Sequence

from ntlab.checks import check_number
from ntlab.errors import NtlabError


def check_lams(lams: Sequence[float], option: str = "--lams") -> list[float]:
    """A non-empty grid of finite λ ≥ 0, sorted, without repeats."""
    if not len(lams):
        raise NtlabError(f"{option} is empty; give λ values separated by commas, e.g. 0,0.25,1")
    return sorted({float(check_number(f"every λ in {option}", v, low=0)) for v in lams})
