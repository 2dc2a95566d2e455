"""Mixing hypotheses over the simplex: the merge landscape of three branches (Fig. 6).

Three branches are forked from one start and trained `steps` each with their own task
weights; then `Σ_b Λ_b θ_b` (or another merge operator's merge of Λ, `--merge-op`) is
evaluated at every point of a simplex grid. Validation
accuracy is the score ForkMerge's grid search walks on (the same `grid_search`, the same
`MergeSpace`); test accuracy and TG against the STL run are recorded beside it, each TG with
its paired test-set standard error (the merged model and the STL run scored on the same test
images, `ntlab.metrics.tg_noise`) and its verdict.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from ntlab.checks import check_number
from ntlab.core.evaluate import direction, evaluate_paired, pairing_fields, score
from ntlab.core.forkmerge import BranchSpec, fork_branches
from ntlab.core.merge import AVERAGE, MergeOp, MergeSpace
from ntlab.core.runner import TrainConfig
from ntlab.core.search import RecordingScore, grid_search
from ntlab.core.train import train
from ntlab.errors import NtlabError
from ntlab.metrics import gain_effect, gain_fields, tg_noise

MAX_RESOLUTION = 100  # 5151 merges, each evaluated on validation and test


def check_resolution(resolution: int) -> int:
    if not resolution >= 1:
        raise NtlabError(f"--resolution must be at least 1 (the corners), got {resolution}")
    return check_number(
        "--resolution",
        resolution,
        low=1,
        high=MAX_RESOLUTION,
        integer=True,
        why=f"R = {MAX_RESOLUTION} already evaluates 5151 merges",
    )


def ternary_table(
    cfg: TrainConfig,
    branches: list[BranchSpec],
    resolution: int,
    stl: Mapping[str, Any],
    on_step: Callable[[int, int], None] | None = None,
    op: MergeOp = AVERAGE,
) -> tuple[pd.DataFrame, list[dict]]:
    """(one row per grid point: w0, w1, w2, val_score, test_score, tg, tg_se, tg_se_kind, effect,
    best; each branch's own val/test accuracy).

    `stl` is the STL run's result (`test_score`, and `test_correct` for the paired SE; without
    it the SE is the binomial one). `op` merges the branches (ntlab.core.merge; `ties` and
    `dare` on their deltas from the common start)."""
    if len(branches) != 3:
        raise NtlabError(f"a ternary map needs exactly three branches, got {len(branches)}")
    check_resolution(resolution)
    op.check()
    data, states = fork_branches(cfg, branches)
    start = {k: v.detach().clone() for k, v in states[0].model.state_dict().items()}
    for b, (state, spec) in enumerate(zip(states, branches)):
        step = (lambda s, b=b: on_step(b, s)) if on_step else None
        train(state, list(spec.terms), cfg.steps, on_step=step)
    target = data[cfg.target]
    space = MergeSpace([s.model.state_dict() for s in states], op=op, base=start)
    probe = copy.deepcopy(states[0].model)

    sign = 1.0 if target.spec.higher_is_better else -1.0  # the search maximises

    def val_score(weights) -> float:
        space.load_into(probe, weights)
        return sign * score(probe, target, "val")

    recorded = RecordingScore(val_score)
    best = grid_search(recorded, 3, 1 / resolution)
    rows = []
    for weights, val_score in recorded.candidates:
        space.load_into(probe, weights)
        values, pairing = evaluate_paired(probe, target, "test")
        test_score = values[target.spec.primary]
        merged = {"test_score": test_score, **pairing_fields(pairing), **direction(target)}
        noise = tg_noise(merged, stl)
        rows.append(
            {
                "w0": weights[0],
                "w1": weights[1],
                "w2": weights[2],
                "val_score": sign * val_score,
                "test_score": test_score,
                **noise,
                "effect": gain_effect([noise["tg"]], noise["tg_se"]),
                "best": tuple(weights) == tuple(best.weights),
            }
        )
    own = [
        {
            "branch": b,
            "task_weights": spec.describe(),
            "val_score": score(state.model, target, "val"),
            "test_score": score(state.model, target, "test"),
        }
        for b, (state, spec) in enumerate(zip(states, branches))
    ]
    return pd.DataFrame(rows), own


def ternary_summary(table: pd.DataFrame, own: list[dict]) -> dict:
    """Best Λ (on validation) and its TG, TG at each corner and at the centre, and the best
    point on test (chosen in hindsight), each TG with its test-set SE and verdict."""
    best = table[table["best"]].iloc[0]
    corners = {}
    for b in range(3):
        row = table[table[f"w{b}"] == 1.0].iloc[0]
        corners[own[b]["task_weights"]] = {"test_score": float(row["test_score"]), **_gain(row)}
    centre = (
        table.assign(
            d=(table["w0"] - 1 / 3).abs()
            + (table["w1"] - 1 / 3).abs()
            + (table["w2"] - 1 / 3).abs()
        )
        .sort_values("d")
        .iloc[0]
    )
    hindsight = table.loc[table["tg"].idxmax()]
    return {
        "points": int(len(table)),
        "best": {
            "weights": _weights(best),
            "val_score": float(best["val_score"]),
            "test_score": float(best["test_score"]),
            **_gain(best),
        },
        "corners": corners,
        "centre": {"weights": _weights(centre), **_gain(centre)},
        # the maximum of many noisy TGs: optimistic by construction, not a finding
        "best_test_point": {"weights": _weights(hindsight), **_gain(hindsight)},
        "within_noise_points": int((table["effect"] == "within_noise").sum()),
        "branches": own,
    }


def _weights(row: pd.Series) -> list[float]:
    return [float(row["w0"]), float(row["w1"]), float(row["w2"])]


def _gain(row: pd.Series) -> dict:
    """`tg`, `tg_se`, `tg_se_kind`, `seeds` and `effect` of one merged model."""
    return gain_fields([float(row["tg"])], float(row["tg_se"]), str(row["tg_se_kind"]))
