"""Who helps whom: TG of every ordered (target, auxiliary) pair of domains (Figs. 5, 6a–b).

A cell is one (target, aux, method, seed): equal-weight joint training of the pair (`ew`)
or ForkMerge with two branches, the target alone and the target + the auxiliary domain
(`forkmerge`). Every training goes through the run cache, and each target's STL run is
shared by all its cells.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pandas as pd

from ntlab.analysis.sweep import entry, mean_std, se_columns
from ntlab.catalog import PAIR_METHODS  # noqa: F401  (re-exported)
from ntlab.core.forkmerge import ForkMergeOptions, cached_forkmerge, joint_branches
from ntlab.core.runner import TrainConfig, cached_run, stl_config
from ntlab.errors import NtlabError, did_you_mean, unknown_name
from ntlab.metrics import gain, regime_basis, regime_of_seeds, regime_rule

COLUMNS = [
    "target", "aux", "method", "seed", "score", "stl_score", "tg", "tg_se", "tg_se_kind", "test_n",
    "val_score", "stl_val_score",
]  # fmt: skip


@dataclass(frozen=True)
class Cell:
    target: str
    aux: str
    method: str
    seed: int

    def key(self) -> tuple[str, str, str, int]:
        return (self.target, self.aux, self.method, self.seed)


def check_domains(domains: Sequence[str], tasks: Sequence[str]) -> list[str]:
    domains = list(dict.fromkeys(domains))
    unknown = [d for d in domains if d not in tasks]
    if unknown:
        hint = did_you_mean(unknown[0], tasks)
        raise NtlabError(
            f"--domains has {unknown[0]!r}, which is not a domain of the benchmark; "
            f"{hint}{'C' if hint else 'c'}hoose one of: {', '.join(tasks)}"
        )
    if len(domains) < 2:
        raise NtlabError("--domains needs at least two domains to form a pair")
    return domains


def check_methods(methods: Sequence[str]) -> list[str]:
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in PAIR_METHODS:
            raise unknown_name("pairwise method", m, PAIR_METHODS)
    if not methods:
        raise NtlabError("--method is empty; choose from: " + ", ".join(PAIR_METHODS))
    return methods


def pairwise_cells(
    domains: Sequence[str], methods: Sequence[str], seeds: Sequence[int]
) -> list[Cell]:
    """Every ordered pair, grouped by seed then target so each STL run is reused at once."""
    return [
        Cell(t, a, m, s) for s in seeds for t in domains for a in domains if a != t for m in methods
    ]


def cell_config(base: TrainConfig, cell: Cell) -> TrainConfig:
    return TrainConfig(
        **{
            **asdict(base),
            "target": cell.target,
            "aux": [cell.aux],
            "method": "ew",
            "seed": cell.seed,
        }
    )


def cell_jobs(base: TrainConfig, cell: Cell, fm: ForkMergeOptions | None) -> list:
    """The trainings one cell reads (`ntlab.core.executor.Job`): its own and its STL run."""
    from ntlab.core.executor import Job

    cfg = cell_config(base, cell)
    name = f"{cell.target} ← {cell.aux} seed {cell.seed}"
    if cell.method == "ew":
        own = Job(cfg, label=f"ew {name}")
    else:
        branches = tuple(joint_branches(cfg.target, cfg.aux))
        own = Job(cfg, branches, fm, label=f"forkmerge {name}")
    return [own, Job(stl_config(cfg), label=f"stl {cell.target} seed {cell.seed}")]


def run_cell(
    base: TrainConfig,
    cell: Cell,
    fm: ForkMergeOptions,
    on_step: Callable[[str], Callable[[int], None] | None] | None = None,
) -> dict:
    """One cell's row (and whether its training ran or came from the cache)."""
    cfg = cell_config(base, cell)
    if cell.method == "ew":
        results, source = cached_run(cfg, on_step("ew") if on_step else None)
    else:
        branches = joint_branches(cfg.target, cfg.aux)
        results, source = cached_forkmerge(
            cfg, branches, fm, on_step("forkmerge") if on_step else None
        )
    stl, _ = cached_run(stl_config(cfg), on_step("stl") if on_step else None)
    return {
        "target": cell.target,
        "aux": cell.aux,
        "method": cell.method,
        "seed": cell.seed,
        "score": results["test_score"],
        "stl_score": stl["test_score"],
        "tg": gain(results, stl),
        **se_columns(results, stl),
        "val_score": results["val_score"],
        "stl_val_score": stl["val_score"],
        "source": source,
    }


def tg_matrix(table: pd.DataFrame, method: str, stat: str = "mean") -> pd.DataFrame:
    """Targets as rows, auxiliary domains as columns, the seed mean (or std) of TG."""
    part = table[table["method"] == method]
    order = list(dict.fromkeys([*part["target"], *part["aux"]]))
    matrix = part.pivot_table(index="target", columns="aux", values="tg", aggfunc=stat)
    return matrix.reindex(index=[d for d in order if d in matrix.index], columns=order)


def _se(fields: dict) -> dict:
    return {"se": fields["tg_se"], "se_kind": fields["tg_se_kind"]} if "tg_se" in fields else {}


def cell_effects(table: pd.DataFrame, method: str) -> pd.DataFrame:
    """Targets as rows, auxiliary domains as columns: each cell's effect (helps, hurts,
    within_noise) by the rule of `ntlab.metrics` (its seed std, or its test-set SE)."""
    part = table[table["method"] == method]
    effects = {key: entry(cell)["effect"] for key, cell in part.groupby(["target", "aux"])}
    frame = pd.Series(effects, dtype=object).unstack()
    matrix = tg_matrix(table, method)
    return frame.reindex(index=matrix.index, columns=matrix.columns)


def tg_noise_matrix(table: pd.DataFrame, method: str) -> pd.DataFrame:
    """As `tg_matrix`: each cell's ± — its seed std (several seeds) or test-set SE (one)."""
    part = table[table["method"] == method]
    noise = {}
    for key, cell in part.groupby(["target", "aux"]):
        fields = entry(cell)
        noise[key] = fields.get("tg_std", fields.get("tg_se"))
    matrix = tg_matrix(table, method)
    frame = pd.Series(noise, dtype=float).unstack()
    return frame.reindex(index=matrix.index, columns=matrix.columns)


def pairwise_summary(table: pd.DataFrame) -> dict:
    """Per method: negative cells, cells below −1, mean TG; per target its regime over the
    auxiliary domains, each cell helping, hurting or within its seed noise by the rule of
    `ntlab.metrics` (positive: some help, none hurts; weak_negative: some help, some hurt;
    strong_negative: some hurt, none helps; neutral: none clears the noise)."""
    summary: dict = {"seeds": sorted(int(s) for s in table["seed"].unique()), "methods": {}}
    counts: list[int] = []
    for method, part in table.groupby("method", sort=False):
        cells = part.groupby(["target", "aux"], sort=False)["tg"]
        means = cells.mean()
        stds = cells.std(ddof=1).fillna(0.0)
        min_over_seeds = cells.min()
        fields = {key: entry(cell) for key, cell in part.groupby(["target", "aux"], sort=False)}
        regimes = {
            target: regime_of_seeds(
                {aux: cell["tg"].tolist() for aux, cell in rows.groupby("aux", sort=False)},
                {aux: fields[(target, aux)].get("tg_se") for aux in rows["aux"].unique()},
            )
            for target, rows in part.groupby("target", sort=False)
        }
        effects = {
            f"{t}<-{a}": effect for t, r in regimes.items() for a, effect in r.effects.items()
        }
        counts += [n for r in regimes.values() for n in r.seeds]
        summary["methods"][method] = {
            "cells": int(len(means)),
            "negative_cells": int((means < 0).sum()),  # by sign; what counts is below
            "hurt_cells": sum(e == "hurts" for e in effects.values()),  # beyond noise
            "helped_cells": sum(e == "helps" for e in effects.values()),
            "cells_below_minus_1": int((means < -1).sum()),
            "mean_tg": float(means.mean()),
            "tg": mean_std(means),
            "positive_on_every_seed_ge_1": [
                f"{t}<-{a}" for (t, a), v in min_over_seeds.items() if v >= 1
            ],
            "regime_per_target": {t: r.regime for t, r in regimes.items()},
            "cells_tg": {
                f"{t}<-{a}": {
                    "mean": float(means[(t, a)]),
                    "std": float(stds[(t, a)]),
                    **_se(fields[(t, a)]),
                    "seeds": fields[(t, a)]["seeds"],
                    "effect": effects[f"{t}<-{a}"],
                }
                for (t, a) in means.index
            },
        }
    if counts:
        summary["regime_basis"] = regime_basis(counts)
        summary["regime_rule"] = regime_rule(min(counts))
    return summary
