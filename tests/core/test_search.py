import math

import pytest

from ntlab.core.search import (
    binary_search,
    greedy_search,
    grid_search,
    prune_branches,
    simplex_grid,
)
from ntlab.errors import NtlabError


def peak_at(target):
    """A synthetic P̂ with its unique maximum at `target` (a point of the simplex)."""
    return lambda w: -sum((a - b) ** 2 for a, b in zip(w, target))


@pytest.mark.parametrize(
    "branches, step, count", [(2, 0.1, 11), (3, 0.1, 66), (3, 0.25, 15), (4, 0.5, 10)]
)
def test_simplex_grid_covers_the_simplex(branches, step, count):
    grid = simplex_grid(branches, step)
    assert len(grid) == count == math.comb(round(1 / step) + branches - 1, branches - 1)
    assert len(set(grid)) == count
    assert all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in grid)


def test_simplex_grid_rejects_a_step_that_does_not_divide_one():
    with pytest.raises(NtlabError, match="must divide 1"):
        simplex_grid(2, 0.3)


@pytest.mark.parametrize("target", [(0.7, 0.3), (1.0, 0.0), (0.0, 1.0)])
def test_grid_search_finds_the_maximiser_for_two_branches(target):
    result = grid_search(peak_at(target), branches=2, step=0.1)
    assert result.weights == pytest.approx(target)
    assert len(result.candidates) == 11
    assert result.score == max(s for _, s in result.candidates)


def test_grid_search_finds_the_maximiser_for_three_branches():
    result = grid_search(peak_at((0.5, 0.2, 0.3)), branches=3, step=0.1)
    assert result.weights == pytest.approx((0.5, 0.2, 0.3))
    assert len(result.candidates) == 66


def test_binary_search_finds_the_maximiser_of_a_unimodal_score():
    result = binary_search(lambda w: -((w[1] - 0.37) ** 2), tol=1 / 64)
    assert abs(result.weights[1] - 0.37) < 1 / 32
    assert len(result.candidates) < 16  # cheaper than a fine grid


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_binary_search_reaches_the_endpoints(lam):
    result = binary_search(lambda w: -abs(w[1] - lam))
    assert result.weights == pytest.approx((1 - lam, lam))


def test_greedy_search_follows_algorithm_3():
    # P̂ depends on each branch's weight relative to branch 0: the optimum is reachable by
    # Algorithm 3 when each ratio is on its grid of [0, U].
    ratios = {1: 0.5, 2: 0.3}

    def score(w):
        return -sum((w[b] / w[0] - r) ** 2 for b, r in ratios.items()) if w[0] > 0 else -1e9

    result = greedy_search(score, branch_scores=[90.0, 85.0, 80.0], grid=10)
    assert result.weights == pytest.approx((1 / 1.8, 0.5 / 1.8, 0.3 / 1.8))
    # branch 1 searched on [0, 1], branch 2 on [0, U] with U = (1 + 0.5) / 2 = 0.75
    assert len(result.candidates) == 1 + 10 + 10


def test_greedy_search_starts_from_the_best_branch():
    result = greedy_search(peak_at((0.0, 1.0, 0.0)), branch_scores=[70.0, 95.0, 60.0], grid=4)
    assert result.weights == pytest.approx((0.0, 1.0, 0.0))


def test_a_margin_keeps_the_target_alone_branch_against_a_small_gain():
    bumpy = lambda w: 80.0 + (0.3 if w[1] > 0 else 0.0)  # noqa: E731 - a tiny gain for any aux weight
    assert grid_search(bumpy, 2, 0.1).weights != (1.0, 0.0)
    assert grid_search(bumpy, 2, 0.1, margin=0.5).weights == (1.0, 0.0)
    assert binary_search(bumpy, margin=0.5).weights == (1.0, 0.0)
    assert greedy_search(bumpy, [80.0, 79.0], grid=5, margin=0.5).weights == (1.0, 0.0)
    big = lambda w: 80.0 + 2.0 * w[1]  # noqa: E731 - a real gain still wins
    chosen = grid_search(big, 2, 0.1, margin=0.5)
    # each step away from the target must gain > 0.5: it moves in jumps of 0.3 and stops
    # within the margin of the true maximum (w = (0, 1), P̂ = 82)
    assert chosen.weights == pytest.approx((0.1, 0.9)) and 82.0 - chosen.score <= 0.5


def test_ties_go_to_more_weight_on_the_target_branch():
    flat = lambda w: 50.0  # noqa: E731
    assert grid_search(flat, 3, 0.25).weights == (1.0, 0.0, 0.0)
    assert binary_search(flat).weights == (1.0, 0.0)


def test_pruning_keeps_the_target_branch_and_the_heaviest_others():
    assert prune_branches([0.0, 0.5, 0.1, 0.4], keep=2) == [0, 1]
    assert prune_branches([0.9, 0.0, 0.05, 0.05], keep=3) == [0, 2, 3]
    assert prune_branches([0.1, 0.9], keep=1) == [0]
    with pytest.raises(NtlabError, match="at least 1"):
        prune_branches([0.5, 0.5], keep=0)


def linear(corners):
    """P̂ of a merge as the Λ-weighted mean of the branches' own scores."""
    return lambda w: sum(a * b for a, b in zip(w, corners))


def test_greedy_measures_the_margin_against_the_target_alone_branch():
    # branch 1 ranks first on its own score, but not by more than the margin
    score = linear((80.0, 80.2, 79.0))
    assert greedy_search(score, (80.0, 80.2, 79.0), margin=0.5).weights == (1.0, 0.0, 0.0)
    assert grid_search(score, 3, 0.1, margin=0.5).weights == (1.0, 0.0, 0.0)
    # beyond the margin, the better branch wins under both
    assert greedy_search(score, (80.0, 80.2, 79.0), margin=0.1).weights == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("branches", [2, 3, 4])
def test_ties_go_to_the_target_alone_branch_under_every_search(branches):
    flat = lambda w: 50.0  # noqa: E731 - every merge scores the same
    runs = [grid_search(flat, branches, 0.25), greedy_search(flat, [50.0] * branches, 4)]
    if branches == 2:
        runs.append(binary_search(flat))
    for result in runs:
        assert result.weights == tuple(float(i == 0) for i in range(branches))


@pytest.mark.parametrize("peak", [(0.0, 1.0), (0.2, 0.5, 0.3), (0.0, 0.0, 0.5, 0.5)])
def test_a_margin_larger_than_any_gain_returns_the_target_alone_branch(peak):
    branches = len(peak)
    score = peak_at(peak)  # every gain over the target corner is < 2
    alone = tuple(float(i == 0) for i in range(branches))
    own = [score(tuple(float(i == b) for i in range(branches))) for b in range(branches)]
    runs = [grid_search(score, branches, 0.1, margin=3.0), greedy_search(score, own, margin=3.0)]
    if branches == 2:
        runs.append(binary_search(score, margin=3.0))
    for result in runs:
        assert result.weights == alone and result.score == score(alone)
