"""Mixing hypotheses over the simplex: the merge landscape of three branches (Fig. 6).

Three branches are forked from one start and trained `steps` each with their own task
weights; then `Σ_b Λ_b θ_b` is evaluated at every point of a simplex grid. Validation
accuracy is the score ForkMerge's grid search walks on (the same `grid_search`, the same
`MergeSpace`); test accuracy and TG against the STL run are recorded beside it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pandas as pd

from ntlab.checks import check_number
from ntlab.core.evaluate import evaluate
from ntlab.core.forkmerge import BranchSpec, fork_branches
from ntlab.core.merge import MergeSpace
from ntlab.core.runner import TrainConfig
from ntlab.core.search import RecordingScore, grid_search
from ntlab.core.train import train
from ntlab.errors import NtlabError
from ntlab.metrics import transfer_gain

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
    stl_test_acc: float,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """(one row per grid point: w0, w1, w2, val_acc, test_acc, tg, best;
    each branch's own val/test accuracy)."""
    if len(branches) != 3:
        raise NtlabError(f"a ternary map needs exactly three branches, got {len(branches)}")
    check_resolution(resolution)
    data, states = fork_branches(cfg, branches)
    for b, (state, spec) in enumerate(zip(states, branches)):
        step = (lambda s, b=b: on_step(b, s)) if on_step else None
        train(state, list(spec.terms), cfg.steps, on_step=step)
    target = data[cfg.target]
    space = MergeSpace([s.model.state_dict() for s in states])
    probe = copy.deepcopy(states[0].model)

    def val_score(weights) -> float:
        space.load_into(probe, weights)
        return evaluate(probe, target, "val")["acc"]

    score = RecordingScore(val_score)
    best = grid_search(score, 3, 1 / resolution)
    rows = []
    for weights, val_acc in score.candidates:
        space.load_into(probe, weights)
        test_acc = evaluate(probe, target, "test")["acc"]
        rows.append(
            {
                "w0": weights[0],
                "w1": weights[1],
                "w2": weights[2],
                "val_acc": val_acc,
                "test_acc": test_acc,
                "tg": transfer_gain(test_acc, stl_test_acc),
                "best": tuple(weights) == tuple(best.weights),
            }
        )
    own = [
        {
            "branch": b,
            "task_weights": spec.describe(),
            "val_acc": evaluate(state.model, target, "val")["acc"],
            "test_acc": evaluate(state.model, target, "test")["acc"],
        }
        for b, (state, spec) in enumerate(zip(states, branches))
    ]
    return pd.DataFrame(rows), own


def ternary_summary(table: pd.DataFrame, own: list[dict]) -> dict:
    """Best Λ (on validation) and its TG, TG at each corner and at the centre."""
    best = table[table["best"]].iloc[0]
    corners = {}
    for b in range(3):
        row = table[table[f"w{b}"] == 1.0].iloc[0]
        corners[own[b]["task_weights"]] = {
            "tg": float(row["tg"]),
            "test_acc": float(row["test_acc"]),
        }
    centre = (
        table.assign(
            d=(table["w0"] - 1 / 3).abs()
            + (table["w1"] - 1 / 3).abs()
            + (table["w2"] - 1 / 3).abs()
        )
        .sort_values("d")
        .iloc[0]
    )
    return {
        "points": int(len(table)),
        "best": {
            "weights": [float(best["w0"]), float(best["w1"]), float(best["w2"])],
            "val_acc": float(best["val_acc"]),
            "test_acc": float(best["test_acc"]),
            "tg": float(best["tg"]),
        },
        "corners": corners,
        "centre": {
            "weights": [float(centre["w0"]), float(centre["w1"]), float(centre["w2"])],
            "tg": float(centre["tg"]),
        },
        "best_test_point": {
            "weights": [float(v) for v in table.loc[table["tg"].idxmax(), ["w0", "w1", "w2"]]],
            "tg": float(table["tg"].max()),
        },
        "branches": own,
    }
