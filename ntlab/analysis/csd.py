"""Distribution shift versus transfer gain (paper Fig. 3b, Eq. 16).

For each λ the core's fixed-λ joint training (Eq. 1; λ = 0 is STL) gives θ_T(λ); its
confidence score discrepancy on the target test split (Eq. 4) measures how far the
interpolated training distribution is from the target, and TG(λ) = P(θ_T(λ)) − P(θ_T(0)).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import pandas as pd

from ntlab.analysis.sweep import (
    DEFAULT_LAMS,
    OnRun,
    fixed_config,
    grid_job,
    grid_jobs,
    lam_stats,
    lam_summary,
    lambda_grid_table,
)
from ntlab.core.runner import TrainConfig

__all__ = ["DEFAULT_LAMS", "csd_summary", "csd_table", "fixed_config", "grid_job", "grid_jobs"]


def csd_table(
    base: TrainConfig,
    lams: Sequence[float],
    seeds: Sequence[int],
    on_run: OnRun | None = None,
    done: Mapping[tuple[float, int], dict] | None = None,
    on_row: Callable[[dict], None] | None = None,
    skip: Collection[Path] = (),
) -> pd.DataFrame:
    """One row per (λ, seed): csd, tg, its test-set SE (tg_se, tg_se_kind), val_score, test_score,
    source (run | cache); `done`, `on_row` and `skip` as in `lambda_grid_table`."""
    table = lambda_grid_table(base, lams, seeds, on_run, done, on_row, skip)
    columns = [
        "lam",
        "seed",
        "csd",
        "tg",
        "tg_se",
        "tg_se_kind",
        "val_score",
        "test_score",
        "source",
    ]
    return table.reindex(columns=columns)


def csd_summary(table: pd.DataFrame) -> dict:
    """Per-λ mean ± std of CSD and TG, the regime (Defs. 3.2/3.3) and the best λ > 0."""
    stats = lam_stats(table, ["csd", "tg"])
    corr = table["csd"].corr(table["tg"]) if table["tg"].std() > 0 else float("nan")
    return {
        **lam_summary(table, stats),
        "corr_csd_tg": None if pd.isna(corr) else float(corr),
    }
