"""Predicting the transfer map before paying for it (`ntlab affinity`).

One equal-weight training of all the tasks together (the preset's budget). Every `every`
steps it measures, on the shared parameters θ (the backbone), for every ordered pair of
tasks i → j:

- `lookahead` (Fifty et al. 2021, "TAG"): Z_{i→j} = 1 − L_j(θ − η g_i) / L_j(θ). g_i is the
  gradient of task i's loss on one training mini-batch of its own (drawn from a stream of
  the measurement's, so training sees the same batches with or without it), η the learning
  rate of the step just taken (the backbone's), L_j task j's loss on a fixed held-out set of
  its validation images, with every head as it is. Z > 0: a step on i lowers j's loss.
- `lookahead-adam`: the same with the step training would take, Adam's preconditioned
  η·g_i/(√v̂ + ε) (v̂: the optimiser's bias-corrected second moments, read, never changed);
  a plain SGD step of the training's rate is far smaller than Adam's and probes only the
  first-order term. Under SGD it equals `lookahead`.
- `cosine`: cos(g_i, g_j), the paper's gradient cosine similarity, per pair.
- `shift`: the distribution shift between the two tasks' inputs as the shared backbone
  sees them (the paper's second observation: a larger shift, a larger discrepancy):
  −‖μ_i − μ_j‖² / ½(tr Σ_i + tr Σ_j), μ and Σ the mean and covariance of the backbone's
  features (spatially averaged for dense backbones) over each task's held-out images.
  Larger (closer to 0) predicts more transfer. Tasks that share their inputs have no shift
  (0 everywhere): it says nothing there.

A predictor averaged over the measurements is a target × auxiliary matrix: the value of
i → j sits in row j (the target), column i (the auxiliary task), the layout of `pairwise`.

One predictor is derived from those matrices rather than measured (`DERIVED`):
`two-level`, the target's mean gradient cosine with the other tasks standardised over the
targets (which target can share the others' steps), plus the shift standardised within the
target's row (which auxiliary task's inputs are closest), with equal weights.

Gradients are taken in train mode with frozen BatchNorm statistics and losses in eval
mode, in fp32; nothing the measurement does changes the training's parameters, optimiser
or batches, so the trained model is the EW model of the same config.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.func import functional_call

from ntlab.checks import check_number
from ntlab.core.evaluate import score
from ntlab.core.runner import (
    TrainConfig,
    apply_threads,
    benchmark_of,
    build_model,
    resolve_device,
    validate,
)
from ntlab.core.state import TrainState
from ntlab.core.train import LossTerm, attach_sources, term_losses, train
from ntlab.data.benchmark import TaskData
from ntlab.data.files import take
from ntlab.data.sampler import BatchSource, seeded_generator
from ntlab.errors import NtlabError
from ntlab.metrics import gradient_cosine
from ntlab.models.multitask import MultiTaskModel, frozen_batchnorm_statistics
from ntlab.tasks import flat_views

PREDICTORS = ("lookahead", "lookahead-adam", "cosine", "shift")
# predictors whose sign predicts help (> 0) or harm (< 0)
SIGNED = ("lookahead", "lookahead-adam", "cosine")
# computed from the measured predictors' matrices, not measured: name → the ones it needs
DERIVED = {"two-level": ("cosine", "shift")}
MEASUREMENTS = 20  # default: measurements over the run
COLUMNS = ["step", "target", "aux", "predictor", "value"]


@dataclass(frozen=True)
class AffinityOptions:
    every: int | None = None  # steps between measurements (default: steps / MEASUREMENTS)
    held_out: int = 256  # validation images per task in the held-out set (at most its size)

    def every_for(self, steps: int) -> int:
        return self.every if self.every is not None else max(1, round(steps / MEASUREMENTS))

    def check(self, steps: int) -> None:
        check_number(
            "--every", self.every_for(steps), low=1, high=steps, integer=True,
            why="steps between measurements, at most --steps",
        )  # fmt: skip
        check_number("--held-out", self.held_out, low=1, integer=True)


def affinity_config(cfg: TrainConfig, tasks: list[str]) -> TrainConfig:
    """The one training: EW of every task (the first as the nominal target)."""
    from dataclasses import replace

    if len(tasks) < 2:
        raise NtlabError("affinity needs at least two tasks to form a pair")
    return replace(cfg, target=tasks[0], aux=list(tasks[1:]), method="ew")


@dataclass
class AffinityOutcome:
    table: pd.DataFrame  # COLUMNS: one row per measurement, ordered pair and predictor
    results: dict  # each task's val/test score of the trained EW model, the timings
    model: MultiTaskModel


def _held_out(task: TaskData, n: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed sample of the task's validation split (the same at every measurement)."""
    size = task.size("val")
    pick = torch.randperm(size, generator=seeded_generator(seed, f"affinity:held:{task.name}"))
    pick = pick[: min(n, size)].sort().values
    y = task.y("val")
    return take(task.x("val"), pick, device, seed), y[pick.to(y.device)]


def _pooled(features: torch.Tensor) -> torch.Tensor:
    """Per sample one vector: dense feature maps averaged over their spatial dimensions."""
    return features.flatten(2).mean(2) if features.dim() > 2 else features


def _shift(a: torch.Tensor, b: torch.Tensor) -> float:
    """−‖μ_a − μ_b‖² / ½(tr Σ_a + tr Σ_b) of two feature samples [n, d]."""
    gap = float((a.mean(0) - b.mean(0)).pow(2).sum())
    spread = 0.5 * (float(a.var(0, unbiased=a.shape[0] > 1).sum())
                    + float(b.var(0, unbiased=b.shape[0] > 1).sum()))  # fmt: skip
    if gap == 0.0:
        return 0.0
    return -gap / spread if spread > 0 else -math.inf


def lookahead_affinity(loss_before: float, loss_after: float) -> float:
    """TAG's Z = 1 − L_after / L_before (> 0: the step lowered the loss)."""
    if not loss_before > 0:
        return 0.0  # a loss already at 0 cannot be lowered
    return 1.0 - loss_after / loss_before


class Measurer:
    """The measurements of one training: the held-out sets, the gradient streams."""

    def __init__(
        self,
        model: MultiTaskModel,
        data: dict[str, TaskData],
        tasks: list[str],
        batch_size: int,
        held_out: int,
        seed: int,
    ) -> None:
        device = next(model.parameters()).device
        self.tasks = tasks
        self.heads = [model.head_index(t) for t in tasks]
        self.specs = [data[t].spec for t in tasks]
        self.held = [_held_out(data[t], held_out, seed, device) for t in tasks]
        self.sources = [
            BatchSource([data[t]], [h], batch_size, seeded_generator(seed, f"affinity:{t}"))
            for t, h in zip(tasks, self.heads)
        ]
        same = [[data[a].x("val") is data[b].x("val") for b in tasks] for a in tasks]
        self.shared_inputs = same
        self.names = [n for n, p in model.named_parameters()
                      if n.startswith("backbone.") and p.requires_grad]  # fmt: skip

    def _losses(self, model: MultiTaskModel, backbone: dict | None = None) -> list[float]:
        """Each task's mean loss on its held-out set, the backbone's parameters replaced by
        `backbone` (names without the `backbone.` prefix) when given."""
        out = []
        for (x, y), h, spec in zip(self.held, self.heads, self.specs):
            x = flat_views(x, spec.views)  # a task with views: its loss reads [n·V] outputs
            feats = model.backbone(x) if backbone is None else functional_call(
                model.backbone, backbone, (x,), strict=False
            )  # fmt: skip
            out.append(float(spec.loss(model.heads[h](feats), y)))
        return out

    @torch.no_grad()
    def _features(self, model: MultiTaskModel) -> list[torch.Tensor]:
        return [
            _pooled(model.backbone(flat_views(x, spec.views))).double()
            for (x, _), spec in zip(self.held, self.specs)
        ]

    def measure(
        self,
        model: MultiTaskModel,
        step: int,
        eta: float,
        precondition: list[torch.Tensor] | None = None,
    ) -> list[dict]:
        """One measurement: a row per ordered pair (target j, aux i) and predictor.
        `precondition` (one tensor per shared parameter, the optimiser's per-entry step
        scale) gives `lookahead-adam`; without it, that predictor is the plain lookahead's."""
        params = dict(model.named_parameters())
        shared = [params[n] for n in self.names]
        was_training = model.training
        model.train()
        grads = []
        with frozen_batchnorm_statistics(model):
            for src, h in zip(self.sources, self.heads):
                loss = term_losses(model, [src.next()], [[h]], amp=False)[0][0]
                flat = torch.autograd.grad(loss, shared, allow_unused=True)
                grads.append(
                    [torch.zeros_like(p) if g is None else g for g, p in zip(flat, shared)]
                )
        model.eval()
        with torch.no_grad():
            before = self._losses(model)
            after = []  # after[i][j]: task j's loss after a step on task i
            adam = []  # the same after the optimiser's preconditioned step
            for g in grads:
                moved = {
                    n.removeprefix("backbone."): p.detach() - eta * gi
                    for n, p, gi in zip(self.names, shared, g)
                }
                after.append(self._losses(model, moved))
                if precondition is None:
                    adam.append(after[-1])
                    continue
                moved = {
                    n.removeprefix("backbone."): p.detach() - eta * gi * c
                    for n, p, gi, c in zip(self.names, shared, g, precondition)
                }
                adam.append(self._losses(model, moved))
            feats = self._features(model)
        model.train(was_training)
        flat = [torch.cat([gi.reshape(-1) for gi in g]) for g in grads]
        rows = []
        for j, tgt in enumerate(self.tasks):
            for i, aux in enumerate(self.tasks):
                if i == j:
                    continue
                shift = 0.0 if self.shared_inputs[i][j] else _shift(feats[i], feats[j])
                values = {
                    "lookahead": lookahead_affinity(before[j], after[i][j]),
                    "lookahead-adam": lookahead_affinity(before[j], adam[i][j]),
                    "cosine": float(gradient_cosine(flat[i], flat[j])),
                    "shift": shift,
                }
                rows += [
                    {"step": step, "target": tgt, "aux": aux, "predictor": k, "value": v}
                    for k, v in values.items()
                ]
        return rows


def adam_scale(state: TrainState, names: list[str]) -> list[torch.Tensor] | None:
    """Adam's per-entry step scale 1/(√v̂ + ε) of the shared parameters (v̂ its bias-corrected
    second moment): a gradient g moves θ by η·g/(√v̂ + ε), the size of step training takes.
    None for another optimiser (SGD's step is η·g itself)."""
    opt = state.optimizer
    if not isinstance(opt, torch.optim.Adam):
        return None
    params = dict(state.model.named_parameters())
    group = opt.param_groups[0]
    beta2, eps = group["betas"][1], group["eps"]
    out = []
    for n in names:
        moments = opt.state.get(params[n], {})
        if "exp_avg_sq" not in moments:
            out.append(torch.ones_like(params[n]))
            continue
        t = float(moments["step"])
        v_hat = moments["exp_avg_sq"] / (1 - beta2**t)
        out.append(1.0 / (v_hat.sqrt() + eps))
    return out


def step_size(state: TrainState) -> float:
    """η of the lookahead: the backbone's learning rate of the step just taken (the coming
    step's would be 0 after the last step of a cosine schedule)."""
    group = state.optimizer.param_groups[0]
    return float(group["initial_lr"] * state.schedule(max(0, state.step - 1)))


def run_affinity(
    cfg: TrainConfig,
    tasks: list[str],
    opts: AffinityOptions,
    on_step: Callable[[int], None] | None = None,
) -> AffinityOutcome:
    """Train EW on every task of `tasks` for cfg.steps, measuring every `opts.every` steps."""
    cfg = affinity_config(cfg, tasks)
    validate(cfg)
    opts.check(cfg.steps)
    cfg = apply_threads(cfg)
    device = resolve_device(cfg.device)
    data = benchmark_of(cfg).load(tasks, device)
    state = TrainState.create(build_model(cfg, data, device), cfg.optim(), cfg.steps)
    terms = [LossTerm(t, (t,), 1.0) for t in tasks]  # EW: the same terms as `train --method ew`
    attach_sources(state, terms, data, cfg.batch_size, cfg.seed)
    measurer = Measurer(state.model, data, tasks, cfg.batch_size, opts.held_out, cfg.seed)
    every = opts.every_for(cfg.steps)
    rows: list[dict] = []
    spent = {"train": 0.0, "measure": 0.0}
    while state.step < cfg.steps:
        started = time.perf_counter()
        train(
            state, terms, min(every, cfg.steps - state.step), on_step=on_step,
            bn_batches=cfg.bn_batches, loss_reduction=cfg.loss_reduction,
        )  # fmt: skip
        spent["train"] += time.perf_counter() - started
        started = time.perf_counter()
        eta = step_size(state)
        scale = adam_scale(state, measurer.names)
        rows += measurer.measure(state.model, state.step, eta, scale)
        spent["measure"] += time.perf_counter() - started
    table = pd.DataFrame(rows, columns=COLUMNS)
    check_finite(table)
    results = {
        "tasks": list(tasks),
        "steps": state.step,
        "every": every,
        "measurements": int(table["step"].nunique()),
        "held_out": {t: len(y) for t, (_, y) in zip(tasks, measurer.held)},
        "scores": {t: {s: score(state.model, data[t], s) for s in ("val", "test")} for t in tasks},
        "train_s": round(spent["train"], 2),
        "measure_s": round(spent["measure"], 2),
    }
    return AffinityOutcome(table, results, state.model)


def check_finite(table: pd.DataFrame) -> None:
    """A measurement that is not finite (a diverged training, a zero-spread feature set)
    is not a prediction: the run stops instead of averaging it away."""
    bad = table[~np.isfinite(table["value"].to_numpy(dtype=float))]
    if len(bad):
        row = bad.iloc[0]
        raise NtlabError(
            f"the {row['predictor']} of {row['target']} ← {row['aux']} at step {row['step']} "
            f"is {row['value']}; lower --lr or check the data"
        )


def predictors_of(table: pd.DataFrame) -> list[str]:
    """The measured predictors of `table`, then each derived one whose inputs it holds."""
    measured = list(dict.fromkeys(table["predictor"]))
    return measured + [d for d, needs in DERIVED.items() if set(needs) <= set(measured)]


def _standard(values: pd.Series) -> pd.Series:
    """(v − mean) / std over the values given (the population std); 0 where all are equal."""
    spread = float(values.std(ddof=0)) if len(values) else 0.0
    return (values - values.mean()) / spread if spread > 0 else values * 0.0


def two_level_matrix(cosine: pd.DataFrame, shift: pd.DataFrame) -> pd.DataFrame:
    """`two-level`: a target term plus an auxiliary term, each standardised, equal weights.

    - the target term, the same in a whole row: the target's mean gradient cosine with the
      other tasks (its row mean), standardised over the targets: which target shares the
      direction of the others' gradients, and so can share their steps;
    - the auxiliary term: the shift predictor standardised within the target's row: which
      auxiliary task's inputs are closest to the target's.

    `cosine`, `shift`: target × auxiliary matrices (means over the measurements), NaN
    diagonal. No weight is fitted to a measured map. Without a shift (tasks that share
    their inputs) the auxiliary term is 0 and only the targets are ordered."""
    target = _standard(cosine.mean(axis=1))
    within = shift.apply(lambda row: _standard(row.dropna()).reindex(row.index), axis=1)
    return within.add(target.reindex(within.index), axis=0)


def affinity_matrix(table: pd.DataFrame, predictor: str) -> pd.DataFrame:
    """Targets as rows, auxiliary tasks as columns: the predictor's mean over measurements
    (a derived predictor: computed from those of the measured ones it needs)."""
    if predictor in DERIVED:
        return two_level_matrix(*(affinity_matrix(table, p) for p in DERIVED[predictor]))
    part = table[table["predictor"] == predictor]
    order = list(dict.fromkeys([*part["target"], *part["aux"]]))
    matrix = part.pivot_table(index="target", columns="aux", values="value", aggfunc="mean")
    return matrix.reindex(index=order, columns=order)


def matrix_dict(table: pd.DataFrame, predictor: str) -> dict[str, dict[str, float]]:
    """`affinity_matrix` as {target: {aux: value}}, without the empty diagonal."""
    matrix = affinity_matrix(table, predictor)
    return {
        str(t): {str(a): float(v) for a, v in row.items() if pd.notna(v)}
        for t, row in matrix.iterrows()
    }


# --- scored against a measured map ---------------------------------------------------------


def _spearman(a, b) -> float | None:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # a constant side has no ranking
    return float(spearmanr(a, b).statistic)


def measured_cells(pairwise: pd.DataFrame, method: str = "ew") -> pd.DataFrame:
    """One row per (target, aux) of a pairwise table: the seed mean of TG, and its TG per
    seed as columns `tg_<seed>`."""
    part = pairwise[pairwise["method"] == method]
    if part.empty:
        raise NtlabError(f"the pairwise run has no {method} cells; run it with --method {method}")
    mean = part.groupby(["target", "aux"], sort=False)["tg"].mean().rename("tg")
    per_seed = part.pivot_table(index=["target", "aux"], columns="seed", values="tg")
    per_seed.columns = [f"tg_{int(s)}" for s in per_seed.columns]
    return pd.concat([mean, per_seed], axis=1).reset_index()


def seed_ceiling(cells: pd.DataFrame) -> float | None:
    """The map's own seed-to-seed Spearman correlation (the mean over pairs of seeds): no
    predictor can rank the cells better than one seed of the map ranks another."""
    seeds = [c for c in cells.columns if c.startswith("tg_")]
    values = [_spearman(cells[a], cells[b]) for k, a in enumerate(seeds) for b in seeds[k + 1 :]]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def score_predictors(table: pd.DataFrame, cells: pd.DataFrame) -> dict:
    """Per predictor: Spearman with the measured TG over all cells and per target row (and
    their mean), the share of cells whose sign it predicts (signed predictors), and per
    target the measured TG of the auxiliary task it ranks first against the row's best and
    mean (regret = best − chosen)."""
    out = {}
    for predictor in predictors_of(table):
        matrix = affinity_matrix(table, predictor)
        pred = cells.apply(lambda r, m=matrix: m.loc[r["target"], r["aux"]], axis=1)
        merged = cells.assign(pred=pred.astype(float))
        rows = {}
        for target, row in merged.groupby("target", sort=False):
            chosen = row.loc[row["pred"].idxmax()]
            rows[target] = {
                "spearman": _spearman(row["pred"], row["tg"]),
                "first": str(chosen["aux"]),
                "first_tg": float(chosen["tg"]),
                "best_tg": float(row["tg"].max()),
                "mean_tg": float(row["tg"].mean()),
                "regret": float(row["tg"].max() - chosen["tg"]),
            }
        per_row = [r["spearman"] for r in rows.values() if r["spearman"] is not None]
        signed = predictor in SIGNED
        out[predictor] = {
            "spearman": _spearman(merged["pred"], merged["tg"]),
            "spearman_per_target_mean": float(np.mean(per_row)) if per_row else None,
            "sign_share": (
                float((np.sign(merged["pred"]) == np.sign(merged["tg"])).mean()) if signed else None
            ),
            "mean_regret": float(np.mean([r["regret"] for r in rows.values()])),
            "targets": rows,
        }
    return out


def best_predictor(scores: dict) -> str | None:
    """The predictor with the highest all-cells Spearman correlation (None: none ranks)."""
    ranked = [(v["spearman"], k) for k, v in scores.items() if v["spearman"] is not None]
    return max(ranked)[1] if ranked else None


def select_auxiliary(table: pd.DataFrame, predictor: str, k: int) -> dict[str, list[str]]:
    """For each target, the `k` auxiliary tasks the predictor ranks highest."""
    matrix = affinity_matrix(table, predictor)
    return {
        target: [a for a in row.drop(target, errors="ignore").dropna().sort_values(
            ascending=False).index[:k]]
        for target, row in matrix.iterrows()
    }  # fmt: skip


# --- through the run cache -------------------------------------------------------------


def affinity_key(cfg: TrainConfig, tasks: list[str], opts: AffinityOptions) -> str:
    from ntlab.core.cache import cache_key, digest

    acfg = affinity_config(cfg, tasks)
    every = opts.every_for(acfg.steps)
    return digest({"train": cache_key(acfg), "every": every, "held_out": opts.held_out})


def cached_affinity(
    cfg: TrainConfig,
    tasks: list[str],
    opts: AffinityOptions,
    on_step: Callable[[int], None] | None = None,
) -> tuple[pd.DataFrame, dict, str]:
    """(measurements, results, "cache" | "run"): an identical measurement is reused,
    otherwise run once and kept (NTLAB_HOME/cache/affinity), like any training."""
    from dataclasses import asdict

    from ntlab.core.cache import Entry, Trained, get_or_train

    acfg = affinity_config(cfg, tasks)

    def work() -> Trained:
        out = run_affinity(cfg, tasks, opts, on_step)
        results = {**out.results, "measured": out.table.to_dict("records")}
        config = {"train": asdict(acfg), "every": out.results["every"], "held_out": opts.held_out}
        return Trained(results, out.model, config)

    entry = Entry("affinity", affinity_key(cfg, tasks, opts), f"affinity over {len(tasks)} tasks")
    found = get_or_train(entry, work, on_step=on_step)
    results = dict(found.results)
    table = pd.DataFrame(results.pop("measured"), columns=COLUMNS)
    return table, results, found.source


# --- the measured map it is scored against ----------------------------------------------

# the options that set a training's budget and model: a map measured with others is
# another experiment
BUDGET = (
    "benchmark", "steps", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "backbone",
    "width", "backbone_lr_scale", "bn_batches", "loss_reduction", "root", "image_size",
)  # fmt: skip


def load_measured(path, cfg: TrainConfig, tasks: list[str]) -> tuple[pd.DataFrame, dict]:
    """(cells, about) of a finished `ntlab pairwise` run directory, checked against the
    affinity's training: the same benchmark and budget, EW cells over some of `tasks`.
    `cells` has one row per measured (target, aux) of those tasks (`measured_cells`)."""
    from pathlib import Path

    from ntlab.storage import read_json_object

    path = Path(path)
    fix = "pass the run directory of a finished `ntlab pairwise`"
    if not path.is_dir():
        raise NtlabError(f"--against {path} is not a folder; {fix}")
    if not (path / "config.json").is_file():
        raise NtlabError(f"--against {path} is not a run directory (it has no config.json); {fix}")
    config = read_json_object(path / "config.json", fix)
    if config.get("command") != "pairwise":
        raise NtlabError(
            f"--against {path} is a run of `{config.get('command')}`, not of `pairwise`; {fix}"
        )
    results = read_json_object(path / "results.json", "the pairwise run did not finish; " + fix)
    train_cfg = config.get("train") or {}
    for name in BUDGET:
        ours, theirs = getattr(cfg, name), train_cfg.get(name)
        if theirs != ours and not (name == "root" and theirs is None and ours is None):
            raise NtlabError(
                f"--against {path} was measured with {name} = {theirs}, this affinity trains "
                f"with {name} = {ours}; give the same --benchmark, --preset and options"
            )
    table_path = path / "pairwise.csv"
    try:
        table = pd.read_csv(table_path)
        missing = {"target", "aux", "method", "seed", "tg"} - set(table.columns)
        if missing:
            raise ValueError(f"no column {sorted(missing)[0]!r}")
    except FileNotFoundError:
        raise NtlabError(f"{table_path} is missing; {fix}") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise NtlabError(f"{table_path} is damaged ({exc}); run the pairwise again") from None
    if not np.isfinite(table["tg"].to_numpy(dtype=float)).all():
        raise NtlabError(f"{table_path} has a TG that is not a finite number; run it again")
    table = table[table["target"].isin(tasks) & table["aux"].isin(tasks)]
    cells = measured_cells(table)
    if len(cells) < 3:
        raise NtlabError(
            f"--against {path} has {len(cells)} EW cells among the tasks {', '.join(tasks)}; "
            "scoring needs at least 3"
        )
    about = {
        "path": str(path),
        "cells": int(len(cells)),
        "seeds": sorted(int(s) for s in table["seed"].unique()),
        "duration_s": results.get("duration_s"),
        "cells_trained": results.get("cells_trained"),
        "cells_from_cache": results.get("cells_from_cache"),
    }
    return cells, about
