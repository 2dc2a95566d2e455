"""Sweeping the task weight: fixed-λ joint training (Eq. 1) over a grid of λ and seeds.

Every training goes through the run cache, so the STL run (λ = 0) and any λ already
trained by `train`, `csd` or an earlier sweep cost nothing. The "grid search" baseline of
the paper picks, for each seed, the λ with the best target *validation* accuracy and
reports its *test* TG.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from ntlab.config import SWEEP_LAMS as DEFAULT_LAMS  # noqa: F401  (re-exported)
from ntlab.core.forkmerge import (
    BRANCH_BUILDERS,
    ForkMergeOptions,
    cached_forkmerge,
    forkmerge_cache_dir,
)
from ntlab.core.runner import TrainConfig, cached_results, cached_run, run_cache_dir, stl_config
from ntlab.metrics import (
    delta_m_of,
    entry_fields,
    gain,
    images_measured,
    tg_noise,
    transfer_regime,
)

OnRun = Callable[[str, TrainConfig], Callable[[int], None] | None]


def fixed_config(base: TrainConfig, lam: float, seed: int) -> TrainConfig:
    """Fixed-λ joint training of Eq. 1 with the budget of `base`; λ = 0 is the STL run."""
    cfg = TrainConfig(**{**asdict(base), "method": "fixed", "lam": lam, "seed": seed})
    return stl_config(cfg) if lam == 0 else cfg


def lambda_grid_table(
    base: TrainConfig,
    lams: Sequence[float],
    seeds: Sequence[int],
    on_run: OnRun | None = None,
    done: Mapping[tuple[float, int], dict] | None = None,
    on_row: Callable[[dict], None] | None = None,
    skip: Collection[Path] = (),
) -> pd.DataFrame:
    """One row per (λ, seed): val/test accuracy, TG (test and val) against λ = 0 of the same
    seed, the target's test CSD, and whether the training ran or came from the cache.

    `done` holds rows of (λ, seed) already finished (a resumed run): they are kept, not
    trained again. `on_row` sees every new row as soon as it exists, λ = 0 included (the
    reference of its seed, so a resumed run needs no STL training to compute TG). Trainings
    whose cache folder is in `skip` (they failed in a worker) are left out, and so is every
    λ of a seed whose λ = 0 failed."""
    done = done or {}
    rows = []
    for seed in seeds:
        stl = None
        for lam in sorted(set(lams) | {0.0}):  # λ = 0 first: the reference
            cfg = fixed_config(base, lam, seed)
            if skip and (lam, seed) not in done and run_cache_dir(cfg) in skip:
                if lam == 0:
                    break  # no reference for this seed
                continue
            if (lam, seed) in done:
                row = dict(done[(lam, seed)])
                results = cached_results(cfg) if lam == 0 else None  # its per-image results
                if results is None or results.get("test_score") != row["test_score"]:
                    results = {"test_score": row["test_score"]}
            else:
                label = "stl" if lam == 0 else f"λ={lam:g}"
                results, source = cached_run(cfg, on_run(label, cfg) if on_run else None)
                target = results["tasks"][cfg.target]
                ref = stl or {**target, **results}
                row = {
                    "lam": lam,
                    "seed": seed,
                    "val_score": target["val_score"],
                    "test_score": target["test_score"],
                    "tg": gain(target, ref),
                    **se_columns(results, ref),
                    "tg_val": gain(target, ref, "val"),
                    "delta_m": delta_m_of(results, ref),
                    "test_metrics": target.get("test"),
                    "csd": target.get("test_csd"),
                    "source": source,
                }
                if on_row:
                    on_row(row)
            stl = stl or {**results, "val_score": row["val_score"], "test_score": row["test_score"]}
            if lam in lams:
                rows.append(row)
    return pd.DataFrame(rows).sort_values(["lam", "seed"], ignore_index=True)


def grid_job(base: TrainConfig, lam: float, seed: int):
    """The training of one (λ, seed) of `lambda_grid_table` (`ntlab.core.executor.Job`)."""
    from ntlab.core.executor import Job

    label = f"{'stl' if lam == 0 else f'λ={lam:g}'} seed {seed}"
    return Job(fixed_config(base, lam, seed), label=label)


def grid_jobs(
    base: TrainConfig,
    lams: Sequence[float],
    seeds: Sequence[int],
    done: Collection[tuple[float, int]] = (),
) -> list:
    """The trainings of `lambda_grid_table`, λ = 0 included, less the (λ, seed) in `done`."""
    return [
        grid_job(base, lam, seed)
        for seed in seeds
        for lam in sorted(set(lams) | {0.0})
        if (lam, seed) not in done
    ]


def forkmerge_jobs(
    base: TrainConfig, seeds: Sequence[int], opts: ForkMergeOptions, branches: str = "per-task"
) -> list:
    """The trainings of `forkmerge_rows`: ForkMerge and the STL run of each seed."""
    from ntlab.core.executor import Job

    jobs = []
    for seed in seeds:
        cfg = _forkmerge_config(base, seed)
        specs = tuple(_branch_builder(branches)(cfg.target, cfg.aux))
        jobs.append(Job(cfg, specs, opts, label=f"forkmerge seed {seed}"))
        jobs.append(Job(stl_config(cfg), label=f"stl seed {seed}"))
    return jobs


def _forkmerge_config(base: TrainConfig, seed: int) -> TrainConfig:
    return TrainConfig(**{**asdict(base), "method": "ew", "lam": 1.0, "seed": seed})


def _branch_builder(branches: str):
    return BRANCH_BUILDERS[branches]


def se_columns(results: dict, stl: dict) -> dict:
    """A table row's test-set noise of TG (one seed): `tg_se`, `tg_se_kind`, `test_n`."""
    noise = tg_noise(results, stl)
    return {
        "tg_se": noise["tg_se"],
        "tg_se_kind": noise["tg_se_kind"],
        "test_n": images_measured(results) or images_measured(stl),
    }


def entry(group: pd.DataFrame) -> dict:
    """`ntlab.metrics.entry_fields` of the rows of one entry (one per seed)."""
    return entry_fields(
        group["tg"],
        group["tg_se"] if "tg_se" in group else None,
        group["tg_se_kind"] if "tg_se_kind" in group else None,
    )


def lam_stats(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Mean and seed standard deviation (0 for one seed) of `columns` per λ."""
    grouped = table.groupby("lam")[list(columns)]
    stats = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    return stats.fillna(0.0)


def lam_summary(table: pd.DataFrame, stats: pd.DataFrame) -> dict:
    """Seeds, per-λ statistics, the regime (each λ > 0 helps, hurts or is within its seed
    noise: `ntlab.metrics`) with the rule it used, and the best λ > 0 by mean TG."""
    positive = stats[stats.index > 0]
    best = float(positive["tg_mean"].idxmax())
    entries = {lam: entry(group) for lam, group in table.groupby("lam")}
    regime = transfer_regime(
        {lam: group.tolist() for lam, group in table.groupby("lam")["tg"]},
        {lam: e.get("tg_se") for lam, e in entries.items()},
    )
    per_lam = {}
    for lam, row in stats.iterrows():
        per_lam[f"{lam:g}"] = {k: float(v) for k, v in row.items()}
        if "tg_se" in entries[lam]:  # one seed: TG's test-set SE
            per_lam[f"{lam:g}"].update(tg_se=entries[lam]["tg_se"])
            per_lam[f"{lam:g}"].update(tg_se_kind=entries[lam]["tg_se_kind"])
    return {
        "seeds": sorted(int(s) for s in table["seed"].unique()),
        "per_lam": per_lam,
        **regime.fields(),
        "effect_per_lam": regime.effects,
        "best_lam": best,
        "best_tg": float(positive.loc[best, "tg_mean"]),
        "best_tg_std": float(positive.loc[best, "tg_std"]),
        **({"best_tg_se": entries[best]["tg_se"]} if "tg_se" in entries[best] else {}),
    }


def grid_search_choice(table: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the λ with the best validation score (ties: the smaller λ), and its test TG.

    The best is the largest validation TG (`tg_val`): the primary metric in its direction
    against the same seed's λ = 0 run, so an error metric is chosen at its lowest."""
    ordered = table.sort_values(["seed", "tg_val", "lam"], ascending=[True, False, True])
    columns = [
        "seed",
        "lam",
        "val_score",
        "tg",
        *[c for c in ("tg_se", "tg_se_kind") if c in table],
    ]
    return ordered.groupby("seed", as_index=False).first()[columns]


def forkmerge_rows(
    base: TrainConfig,
    seeds: Sequence[int],
    opts: ForkMergeOptions,
    on_run: OnRun | None = None,
    branches: str = "per-task",
    done: Mapping[int, dict] | None = None,
    on_row: Callable[[dict], None] | None = None,
    skip: Collection[Path] = (),
) -> pd.DataFrame:
    """ForkMerge per seed with the sweep's budget, and its TG against the STL run of the same
    seed. Branches: `per-task` (Eq. 12, the paper's form for several auxiliary tasks: the
    target alone plus one branch per auxiliary task) or `joint` (Algorithm 1: the target
    alone and the target + the mixed auxiliary tasks). `done`, `on_row` and `skip` as in
    `lambda_grid_table`, by seed."""
    build = _branch_builder(branches)
    done = done or {}
    rows = []
    for seed in seeds:
        if seed in done:
            rows.append(dict(done[seed]))
            continue
        cfg = _forkmerge_config(base, seed)
        specs = build(cfg.target, cfg.aux)
        if skip and {forkmerge_cache_dir(cfg, specs, opts), run_cache_dir(stl_config(cfg))} & set(
            skip
        ):
            continue
        results, source = cached_forkmerge(
            cfg, specs, opts, on_run("forkmerge", cfg) if on_run else None
        )
        stl, _ = cached_run(stl_config(cfg), on_run("stl", cfg) if on_run else None)
        rows.append(
            {
                "seed": seed,
                "val_score": results["val_score"],
                "test_score": results["test_score"],
                "tg": gain(results, stl),
                **se_columns(results, stl),
                "tg_val": gain(results, stl, "val"),
                "delta_m": delta_m_of(results, stl),
                "test_metrics": (results.get("target_metrics") or {}).get("test"),
                "source": source,
            }
        )
        if on_row:
            on_row(rows[-1])
    return pd.DataFrame(rows)


def mean_std(values: pd.Series) -> dict:
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std}


def tg_stat(group: pd.DataFrame) -> dict:
    """The TG of an entry's rows for results.json: mean and seed std as before, and its
    noise and verdict (`se` and `se_kind` with one seed, `seeds`, `effect`)."""
    fields = entry(group)
    out = {**mean_std(group["tg"]), "seeds": fields["seeds"]}
    if "tg_se" in fields:
        out.update(se=fields["tg_se"], se_kind=fields["tg_se_kind"])
    return {**out, "effect": fields["effect"]}


def sweep_summary(table: pd.DataFrame, forkmerge: pd.DataFrame | None = None) -> dict:
    """Per-λ mean ± std of TG, the regime, the best λ on test (mean) and the grid-search
    baseline (λ chosen on validation per seed), and ForkMerge's TG when it was run; grid
    search and ForkMerge each with its effect by the regime's noise rule."""
    stats = lam_stats(table, ["tg", "tg_val", "test_score", "val_score", "csd"])
    chosen = grid_search_choice(table)
    summary = {
        **lam_summary(table, stats),
        "grid_search": {
            "lam_per_seed": [float(v) for v in chosen["lam"]],
            "tg": tg_stat(chosen),
            "effect": entry(chosen)["effect"],
        },
    }
    if forkmerge is not None and len(forkmerge):
        summary["forkmerge"] = {
            "tg": tg_stat(forkmerge),
            "test_score": mean_std(forkmerge["test_score"]),
            "effect": entry(forkmerge)["effect"],
        }
    return summary
