"""Distribution shift versus transfer gain (paper Fig. 3b, Eq. 16).

For each λ the core's fixed-λ joint training (Eq. 1; λ = 0 is STL) gives θ_T(λ); its
confidence score discrepancy on the target test split (Eq. 4) measures how far the
interpolated training distribution is from the target, and TG(λ) = P(θ_T(λ)) − P(θ_T(0)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict

import pandas as pd

from ntlab.core.runner import TrainConfig, cached_run, stl_config
from ntlab.metrics import transfer_gain, transfer_regime

DEFAULT_LAMS = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0)


def fixed_config(base: TrainConfig, lam: float, seed: int) -> TrainConfig:
    """Fixed-λ joint training of Eq. 1 with the budget of `base`; λ = 0 is the STL run."""
    cfg = TrainConfig(**{**asdict(base), "method": "fixed", "lam": lam, "seed": seed})
    return stl_config(cfg) if lam == 0 else cfg


def csd_table(
    base: TrainConfig,
    lams: Sequence[float],
    seeds: Sequence[int],
    on_run: Callable[[TrainConfig], Callable[[int], None] | None] | None = None,
) -> pd.DataFrame:
    """One row per (λ, seed): csd, tg, val_acc, test_acc, source (run | cache)."""
    rows = []
    for seed in seeds:
        stl_acc = None
        for lam in sorted(lams, key=lambda v: (v != 0, v)):  # λ = 0 first: the reference
            cfg = fixed_config(base, lam, seed)
            results, source = cached_run(cfg, on_run(cfg) if on_run else None)
            target = results["tasks"][cfg.target]
            if lam == 0:
                stl_acc = target["test_acc"]
            rows.append(
                {
                    "lam": lam,
                    "seed": seed,
                    "csd": target["test_csd"],
                    "tg": transfer_gain(target["test_acc"], stl_acc),
                    "val_acc": target["val_acc"],
                    "test_acc": target["test_acc"],
                    "source": source,
                }
            )
    return pd.DataFrame(rows).sort_values(["lam", "seed"], ignore_index=True)


def lam_stats(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Mean and seed standard deviation (0 for one seed) of `columns` per λ."""
    grouped = table.groupby("lam")[list(columns)]
    stats = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    return stats.fillna(0.0)


def csd_summary(table: pd.DataFrame) -> dict:
    """Per-λ mean ± std of CSD and TG, the regime (Defs. 3.2/3.3) and the best λ > 0."""
    stats = lam_stats(table, ["csd", "tg"])
    positive = stats[stats.index > 0]
    best = float(positive["tg_mean"].idxmax())
    corr = table["csd"].corr(table["tg"]) if table["tg"].std() > 0 else float("nan")
    return {
        "seeds": sorted(int(s) for s in table["seed"].unique()),
        "per_lam": {
            f"{lam:g}": {k: float(v) for k, v in row.items()} for lam, row in stats.iterrows()
        },
        "regime": transfer_regime(positive["tg_mean"].to_dict()),
        "best_lam": best,
        "best_tg": float(positive.loc[best, "tg_mean"]),
        "best_tg_std": float(positive.loc[best, "tg_std"]),
        "corr_csd_tg": None if pd.isna(corr) else float(corr),
    }
