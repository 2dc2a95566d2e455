"""`ntlab compare`: every method on one target with the same model, data, budget and seeds.

Each method is a training of the shared core (cached, like every training: STL runs once per
seed and is reused); `grid-search` is the sweep's best λ chosen on validation and `forkmerge`
is ForkMerge with per-task branches (Eq. 12), both with the same budget per training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict

import pandas as pd

from ntlab.analysis.sweep import (
    DEFAULT_LAMS,
    forkmerge_jobs,
    forkmerge_rows,
    grid_jobs,
    grid_search_choice,
    lambda_grid_table,
    se_columns,
)
from ntlab.analysis.sweep import entry as entry_of
from ntlab.catalog import PROCEDURES, method_names  # noqa: F401  (re-exported)
from ntlab.core.forkmerge import ForkMergeOptions
from ntlab.core.runner import TrainConfig, cached_run, stl_config
from ntlab.errors import NtlabError, unknown_name
from ntlab.metrics import (
    delta_m_of,
    higher_is_better,
    regime_basis,
    regime_rule,
    transfer_gain,
)

NOT_IN_ALL = ("fixed",)  # needs a λ: grid-search is its fair form
OnRun = Callable[[str, TrainConfig], Callable[[int], None] | None]


def all_methods() -> list[str]:
    return [m for m in method_names() if m not in NOT_IN_ALL]


def parse_methods(text: str) -> list[str]:
    """`all` or a comma list of known method names (stl is always added: the reference)."""
    if text.strip() == "all":
        names = all_methods()
    else:
        names = [m.strip() for m in text.split(",") if m.strip()]
        if not names:
            raise NtlabError("--methods is empty; give method names separated by commas, or all")
        for name in names:
            check_method(name)
        if len(set(names)) != len(names):
            raise NtlabError("--methods lists a method twice")
    return ["stl", *[m for m in names if m != "stl"]]


def check_method(name: str) -> str:
    if name not in method_names():
        raise unknown_name("method", name, method_names())
    return name


def method_jobs(
    base: TrainConfig,
    method: str,
    seed: int,
    fm: ForkMergeOptions,
    lams: Sequence[float] = DEFAULT_LAMS,
) -> list:
    """The trainings `method_row` reads (`ntlab.core.executor.Job`), its STL run first."""
    from ntlab.core.executor import Job

    cfg = TrainConfig(**{**asdict(base), "method": "ew", "lam": 1.0, "seed": seed})
    jobs = [Job(stl_config(_as(cfg, method)), label=f"stl seed {seed}")]
    if method == "grid-search":
        return jobs + grid_jobs(cfg, lams, [seed])
    if method == "forkmerge":
        return jobs + forkmerge_jobs(cfg, [seed], fm)
    run_cfg = TrainConfig(**{**asdict(cfg), "method": method, "lam": base.lam})
    return jobs + [Job(run_cfg, label=f"{method} seed {seed}")]


def _as(cfg: TrainConfig, method: str) -> TrainConfig:
    """`cfg` with `method` when it is a training method (the procedures train EW's config)."""
    return cfg if method in PROCEDURES else TrainConfig(**{**asdict(cfg), "method": method})


def method_row(
    base: TrainConfig,
    method: str,
    seed: int,
    fm: ForkMergeOptions,
    lams: Sequence[float] = DEFAULT_LAMS,
    on_run: OnRun | None = None,
) -> dict:
    """One method, one seed: val/test accuracy of the target and TG against STL."""
    cfg = TrainConfig(**{**asdict(base), "method": "ew", "lam": 1.0, "seed": seed})
    # the STL of the method's precision (fp32 for those that read gradients: --precision)
    stl_cfg = stl_config(_as(cfg, method))
    stl, _ = cached_run(stl_cfg, on_run("stl", stl_cfg) if on_run else None)
    extra: dict = {}
    if method == "grid-search":
        table = lambda_grid_table(cfg, lams, [seed], on_run)
        chosen = grid_search_choice(table).iloc[0]
        row = table[(table["lam"] == chosen["lam"]) & (table["seed"] == seed)].iloc[0]
        val_score, test_score, source = row["val_score"], row["test_score"], row["source"]
        extra["lam"] = float(chosen["lam"])
        extra["delta_m"] = _plain(row.get("delta_m"))
        extra["test_metrics"] = row.get("test_metrics")
        noise = {k: _plain(row[k]) for k in ("tg_se", "tg_se_kind", "test_n")}
    elif method == "forkmerge":
        row = forkmerge_rows(cfg, [seed], fm, on_run).iloc[0]
        val_score, test_score, source = row["val_score"], row["test_score"], row["source"]
        noise = {k: _plain(row[k]) for k in ("tg_se", "tg_se_kind", "test_n")}
        extra["delta_m"] = _plain(row.get("delta_m"))
        extra["test_metrics"] = row.get("test_metrics")
    else:
        run_cfg = TrainConfig(**{**asdict(cfg), "method": method, "lam": base.lam})
        results, source = cached_run(run_cfg, on_run(method, run_cfg) if on_run else None)
        val_score, test_score = results["val_score"], results["test_score"]
        noise = se_columns(results, stl)
        extra["delta_m"] = delta_m_of(results, stl)
        extra["test_metrics"] = (results.get("target_metrics") or {}).get("test")
    return {
        "method": method,
        "seed": seed,
        "val_score": float(val_score),
        "test_score": float(test_score),
        "stl_val_score": float(stl["val_score"]),
        "stl_test_score": float(stl["test_score"]),
        "tg": transfer_gain(float(test_score), stl["test_score"], higher_is_better(stl)),
        **noise,
        "tg_val": transfer_gain(float(val_score), stl["val_score"], higher_is_better(stl)),
        "source": source,
        **extra,
    }


def _plain(value):
    """A table cell as a JSON value (numpy numbers to Python ones, NaN to None)."""
    if isinstance(value, str) or value is None:
        return value
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def with_delta_m(rows: pd.DataFrame) -> pd.DataFrame:
    """Δm (App. C.1) of each row: over the target's metrics where the row has it
    (`ntlab.metrics.delta_m_of`), else the relative change of the primary metric in its
    direction, 100 · TG / |P(STL)| (one metric, e.g. accuracy)."""
    fallback = 100 * rows["tg"] / rows["stl_test_score"].abs()
    if "delta_m" not in rows:
        return rows.assign(delta_m=fallback)
    return rows.assign(delta_m=rows["delta_m"].astype(float).fillna(fallback))


def tidy(rows: pd.DataFrame) -> pd.DataFrame:
    """compare.csv: one row per (method, seed, metric)."""
    metrics = ["val_score", "test_score", "tg", "tg_se", "tg_val", "delta_m"]
    frame = with_delta_m(rows)
    metrics = [m for m in metrics if m in frame]
    frame = frame.drop(columns=["test_metrics"], errors="ignore")
    return frame.melt(id_vars=["method", "seed"], value_vars=metrics, var_name="metric")


def _metric_stats(column: pd.Series) -> dict:
    """Mean and seed std of each target metric over the rows that recorded them."""
    found = [m for m in column if isinstance(m, dict)]
    if not found:
        return {}
    out = {}
    for name in found[0]:
        values = pd.Series([float(m[name]) for m in found if name in m])
        out[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        }
    return out


def compare_summary(rows: pd.DataFrame) -> dict:
    """Per method: the target's primary score and TG mean ± seed std, every target metric
    (`metrics`), Δm (App. C.1: the mean relative change of the target's metrics against
    STL in their directions, in %; for a classifier, that of its accuracy), and whether its
    TG helps, hurts or is within its noise (the regime rule of `ntlab.metrics`); methods
    ranked by mean Δm."""
    frame = with_delta_m(rows)
    grouped = frame.groupby("method", sort=False)
    stats = {}
    for method, group in grouped:
        entry = {"seeds": len(group)}
        for column in ("test_score", "val_score", "tg", "delta_m"):
            values = group[column]
            entry[column] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            }
        fields = entry_of(group)
        if "tg_se" in fields:  # one seed: TG's test-set SE
            entry["tg"].update(se=fields["tg_se"], se_kind=fields["tg_se_kind"])
        entry["effect"] = fields["effect"]
        if "test_metrics" in group:
            entry["metrics"] = _metric_stats(group["test_metrics"])
        if "lam" in group and group["lam"].notna().any():
            entry["lam_per_seed"] = [float(x) for x in group["lam"]]
        stats[method] = entry
    ranking = sorted(stats, key=lambda m: stats[m]["delta_m"]["mean"], reverse=True)
    counts = [stats[m]["seeds"] for m in stats]
    out = {
        "methods": stats,
        "ranking": ranking,
        "regime_basis": regime_basis(counts),
        "regime_rule": regime_rule(min(counts)),
    }
    if "forkmerge" in stats:
        out["forkmerge_rank"] = ranking.index("forkmerge") + 1
        others = [m for m in ranking if m not in ("forkmerge", "stl")]
        out["forkmerge_leads"] = bool(others) and ranking[0] == "forkmerge"
    return out
