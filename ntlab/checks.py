"""One rule for every number a user gives: a finite value in its range, named in the message.

Each option's constraint is declared where the option is validated (`validate`,
`validate_forkmerge`, `GcsOptions.check`, …) as one `check_number` call, before any work:
NaN and ±inf are refused by construction (a comparison such as `x < 0` lets NaN through).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from ntlab.errors import NtlabError

MAX_STEPS = 10**8  # a typo guard: 10^8 steps take days even on a GPU (the paper preset: 50000)
MAX_SEED = 2**32 - 1  # NumPy's and scikit-learn's seeds (t-SNE) are 32-bit; torch takes them too
MAX_IMAGE_SIZE = 4096  # pixels of a side; larger crops would not fit in memory
MAX_WORKERS = 256  # loader processes
MAX_WIDTH = 1024  # channels of the cnn's first layer (its last conv then has ~38M weights)
STEPS_WHY = "10^8 steps would run for days; is it a typo?"


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    why: str | None = None,
) -> float | int:
    """`value` when it is a finite number (an integer if `integer`) within [low, high]
    (ends open where asked); otherwise an NtlabError naming `name`, the rule and the value."""
    if integer:
        ok = isinstance(value, Integral) and not isinstance(value, bool)
    else:
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        rule = _rule(low, high, low_open, high_open, integer)
        shown = repr(value) if isinstance(value, str) else str(value)
        raise NtlabError(f"{name} must be {rule}, got {shown}" + (f" ({why})" if why else ""))
    return value


def check_seed(name: str, value: object) -> int:
    """One rule for seeds everywhere (`--seed`, every seed of `--seeds`)."""
    return check_number(name, value, low=0, high=MAX_SEED, integer=True)


def check_steps(name: str, value: object, low: int = 1) -> int:
    """A number of steps (or of passes): at least `low`, at most MAX_STEPS."""
    huge = isinstance(value, Integral) and value > MAX_STEPS
    return check_number(
        name, value, low=low, high=MAX_STEPS, integer=True, why=STEPS_WHY if huge else None
    )


def _rule(
    low: float | None, high: float | None, low_open: bool, high_open: bool, integer: bool
) -> str:
    noun = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        if integer and not (low_open or high_open):
            return f"{noun} between {_text(low)} and {_text(high)}"
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        return f"{noun} in {left}{_text(low)}, {_text(high)}{right}"
    if low is not None:
        return f"{noun} {'>' if low_open else '≥'} {_text(low)}"
    if high is not None:
        return f"{noun} {'<' if high_open else '≤'} {_text(high)}"
    return noun


def _text(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)
