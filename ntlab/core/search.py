"""Choosing the merge weights Λ: grid, greedy (Algorithm 3) and binary search.

Each search is a pure function of a score callback `P̂(Λ) → float` (higher is better), so
the same code serves ForkMerge's merges and the ternary landscapes, and is tested on
synthetic scores. Every evaluated candidate is recorded.

Ties, and improvements no larger than `margin`, go to the candidate that keeps more
weight on the target-alone branch (branch 0): on a small validation split, a slightly
better score for a merge that adds auxiliary weight is as likely noise as signal. Every
search ends with the same check (`protect_target`): the Λ it found must beat the
target-alone branch Λ = (1, 0, …, 0) by more than `margin`, or the target-alone branch is
the result. So with a margin larger than any possible gain, every search returns branch 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ntlab.catalog import SEARCHES  # noqa: F401  (re-exported)
from ntlab.errors import NtlabError

Weights = tuple[float, ...]
Score = Callable[[Weights], float]


@dataclass
class SearchResult:
    weights: Weights
    score: float
    candidates: list[tuple[Weights, float]] = field(default_factory=list)


class RecordingScore:
    """Memoises P̂ by Λ (rounded) and records each distinct candidate in evaluation order."""

    def __init__(self, score: Score) -> None:
        self.score = score
        self.cache: dict[Weights, float] = {}
        self.candidates: list[tuple[Weights, float]] = []

    def __call__(self, weights: Sequence[float]) -> float:
        key = tuple(round(float(w), 10) + 0.0 for w in weights)
        if key not in self.cache:
            self.cache[key] = float(self.score(key))
            self.candidates.append((key, self.cache[key]))
        return self.cache[key]


def simplex_grid(branches: int, step: float) -> list[Weights]:
    """Every Λ on the simplex whose entries are multiples of `step` (which must divide 1)."""
    if branches < 1:
        raise NtlabError("a merge needs at least one branch")
    if not 0 < step <= 1:
        raise NtlabError(f"--grid-step must be in (0, 1], got {step}")
    n = round(1 / step)
    if abs(n * step - 1) > 1e-9:
        raise NtlabError(f"--grid-step must divide 1 (e.g. 0.1, 0.125, 0.25), got {step}")
    points = []
    for cuts in itertools.combinations_with_replacement(range(n + 1), branches - 1):
        parts = [b - a for a, b in zip((0, *cuts), (*cuts, n))]
        points.append(tuple(p / n for p in parts))
    return points


def beats(score: float, best: float, margin: float) -> bool:
    """Whether a candidate with less weight on the preferred side wins over the incumbent."""
    return score > best + margin


def grid_search(
    score: Score, branches: int, step: float = 0.1, margin: float = 0.0
) -> SearchResult:
    """The best Λ on a uniform simplex grid (App. A.1), scanning from the target corner."""
    rec = RecordingScore(score)
    grid = sorted(simplex_grid(branches, step), key=lambda w: -w[0])  # most target weight first
    best, best_score = grid[0], rec(grid[0])
    for w in grid[1:]:
        s = rec(w)
        if beats(s, best_score, margin if w[0] < best[0] else 0.0):
            best, best_score = w, s
    return protect_target(rec, SearchResult(best, best_score, rec.candidates), margin)


def binary_search(score: Score, tol: float = 1 / 32, margin: float = 0.0) -> SearchResult:
    """Two branches, Λ = (1 − λ, λ): bracket the best λ ∈ [0, 1] by golden-section search
    (P̂ assumed unimodal in λ; one new evaluation per step), then return the best point
    seen, the endpoints λ = 0 and λ = 1 included."""
    if not 0 < tol < 1:
        raise NtlabError(f"binary search tolerance must be in (0, 1), got {tol}")
    rec = RecordingScore(score)

    def at(lam: float) -> float:
        return rec((1 - lam, lam))

    at(0.0), at(1.0)
    ratio = (5**0.5 - 1) / 2
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        left, right = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if beats(at(right), at(left), margin):
            lo = left  # the maximum is in [left, hi]
        else:
            hi = right  # ... or in [lo, right]
    return _best_with_margin(rec, margin)


def greedy_search(
    score: Score, branch_scores: Sequence[float], grid: int = 10, margin: float = 0.0
) -> SearchResult:
    """Algorithm 3: add branches in order of their own P̂, each with a weight from a uniform
    grid of [0, U], U = mean of the weights so far; Λ* is the normalised result.

    The margin is measured against the target-alone branch (index 0), wherever it ranks:
    weight on an auxiliary branch must raise P̂ by more than `margin`, weight on the target
    branch only has to match (ties go to it), and the result must beat Λ = e_0 by more than
    `margin` (`protect_target`)."""
    if grid < 1:
        raise NtlabError(f"greedy search needs a grid of at least 1 step, got {grid}")
    rec = RecordingScore(score)
    branches = len(branch_scores)
    order = sorted(range(branches), key=lambda b: -branch_scores[b])  # stable: ties keep index
    raw = [0.0] * branches
    raw[order[0]] = 1.0

    def normalised(values: Sequence[float]) -> Weights:
        total = sum(values)
        return tuple(v / total for v in values)

    best_score = rec(normalised(raw))
    for j in range(1, branches):
        b = order[j]
        upper = sum(raw[m] for m in order[:j]) / j
        chosen, chosen_score = 0.0, rec(normalised(raw))
        for i in range(1, grid + 1):
            trial = list(raw)
            trial[b] = upper * i / grid
            s = rec(normalised(trial))
            # more weight on an auxiliary branch must earn it; on the target, a tie suffices
            if (s >= chosen_score) if b == 0 else beats(s, chosen_score, margin):
                chosen, chosen_score = trial[b], s
        raw[b] = chosen
        best_score = chosen_score
    result = SearchResult(normalised(raw), best_score, rec.candidates)
    return protect_target(rec, result, margin)


def _best_with_margin(rec: RecordingScore, margin: float) -> SearchResult:
    ordered = sorted(rec.candidates, key=lambda c: -c[0][0])
    best, best_score = ordered[0]
    for w, s in ordered[1:]:
        if beats(s, best_score, margin if w[0] < best[0] else 0.0):
            best, best_score = w, s
    return protect_target(rec, SearchResult(best, best_score, rec.candidates), margin)


def protect_target(rec: RecordingScore, result: SearchResult, margin: float) -> SearchResult:
    """`result`, if it beats the target-alone branch Λ = (1, 0, …, 0) by more than `margin`;
    otherwise the target-alone branch (evaluated once, memoised)."""
    alone = tuple(float(i == 0) for i in range(len(result.weights)))
    if tuple(result.weights) == alone:
        return result
    alone_score = rec(alone)
    if beats(result.score, alone_score, margin):
        return result
    return SearchResult(alone, alone_score, rec.candidates)


def prune_branches(weights: Sequence[float], keep: int, protected: int = 0) -> list[int]:
    """Indices of the `keep` branches with the largest Λ (paper §4.2); `protected` (the
    target-alone branch) always stays. Ties go to the lower index."""
    if keep < 1:
        raise NtlabError(f"--prune must keep at least 1 branch, got {keep}")
    ranked = sorted((b for b in range(len(weights)) if b != protected), key=lambda b: -weights[b])
    return sorted([protected, *ranked[: keep - 1]])
