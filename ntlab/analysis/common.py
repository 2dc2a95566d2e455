"""Helpers the analyses share: λ grids and checks of their inputs."""

from __future__ import annotations

from collections.abc import Sequence

from ntlab.errors import NtlabError


def check_lams(lams: Sequence[float], option: str = "--lams") -> list[float]:
    """A non-empty grid of λ ≥ 0, sorted, without repeats."""
    values = sorted(set(float(v) for v in lams))
    if not values:
        raise NtlabError(f"{option} is empty; give λ values separated by commas, e.g. 0,0.25,1")
    negative = [v for v in values if v < 0]
    if negative:
        raise NtlabError(f"{option} has λ = {negative[0]:g}; every λ must be ≥ 0")
    return values
