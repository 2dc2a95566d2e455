"""ForkMerge (the paper's §4, Algorithms 1–3) as a thin layer on the shared core.

Each round, every branch trains Δt steps on its own task weights with the one training
loop; then Λ* is searched on target validation accuracy of Σ_b Λ_b θ_b, and θ* is loaded
into every branch (θ at t + Δt is merged, as in the paper, not a best-so-far checkpoint).

State at a merge, decided:
- parameters and float buffers are merged; integer buffers come from the heaviest branch
  (`ntlab.core.merge`);
- BatchNorm running statistics are averaged like any float buffer; `bn_recalibrate`
  re-estimates them on target training batches after the merge (the chosen merge only:
  candidates are scored with averaged statistics);
- `merge_heads="all"` merges every head with the backbone (the authors' DomainNet code);
  `"shared"` merges the backbone and the target head only, and each branch keeps its own
  auxiliary heads (the authors' NYUv2 code). Branch 0 never trains an auxiliary head, so
  under "all" a branch whose Λ is small restarts each round with a nearly untrained head;
- a branch that diverges (non-finite loss or parameters) takes no part in that round's
  search: it is named in merges.csv, on the terminal and in results.json, and restarts
  from the merged model with fresh optimiser moments;
- each branch keeps its own optimiser moments and its own batch stream across rounds (the
  authors' code and our prototype do the same: a branch's Adam state describes the
  curvature of its own objective); `optimizer_state="reset"` clears the moments after
  every merge instead. The learning-rate schedule follows the global step, which every
  branch shares.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ntlab.catalog import BRANCH_MODES, MERGE_HEADS, OPTIMIZER_STATES  # noqa: F401  (re-exported)
from ntlab.checks import MAX_STEPS, check_number
from ntlab.config import ForkMergeOptions  # noqa: F401  (re-exported)
from ntlab.core.evaluate import predict, target_results
from ntlab.core.merge import MergeSpace, finite_state, recalibrate_batchnorm
from ntlab.core.runner import (
    TrainConfig,
    benchmark_of,
    build_model,
    data_notes,
    metric_rows,
    resolve_device,
)
from ntlab.core.search import (
    SEARCHES,
    RecordingScore,
    SearchResult,
    binary_search,
    greedy_search,
    grid_search,
    prune_branches,
    simplex_grid,
)
from ntlab.core.state import TrainState
from ntlab.core.train import LossTerm, active_terms, attach_sources, train
from ntlab.data import TaskData
from ntlab.data.files import take
from ntlab.data.sampler import seeded_generator
from ntlab.errors import NonFiniteError, NtlabError, unknown_name
from ntlab.methods import AUX_TERM
from ntlab.metrics import accuracy
from ntlab.storage import DamagedFileError, load_torch_file, save_torch_file, short_reason

MAX_CANDIDATES = 10_000  # merges a search scores per round (each is a validation pass)
MIN_GRID_STEP = 0.001


@dataclass(frozen=True)
class BranchSpec:
    """A branch: its loss terms (task weights ν^b). Branch 0 is the target alone."""

    terms: tuple[LossTerm, ...]

    def describe(self) -> str:
        return ",".join(f"{'+'.join(t.tasks)}={t.weight:g}" for t in self.terms)


def joint_branches(target: str, aux: list[str]) -> list[BranchSpec]:
    """Algorithm 1: the target alone, and the target + all auxiliary tasks mixed (λ = 1)."""
    tgt = LossTerm(target, (target,), 1.0)
    return [BranchSpec((tgt,)), BranchSpec((tgt, LossTerm(AUX_TERM, tuple(aux), 1.0)))]


def per_task_branches(target: str, aux: list[str]) -> list[BranchSpec]:
    """Eq. 12: the target alone plus one branch per auxiliary task."""
    tgt = LossTerm(target, (target,), 1.0)
    return [BranchSpec((tgt,))] + [BranchSpec((tgt, LossTerm(a, (a,), 1.0))) for a in aux]


def parse_branch(text: str, tasks: list[str]) -> BranchSpec:
    """`"mnist=1,syn=0.5"` → one term per task with its weight (Eq. 13's ν^b)."""
    terms = []
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise NtlabError(
                f"--branch expects TASK=WEIGHT pairs separated by commas, got {text!r}"
            )
        if name not in tasks:
            raise unknown_name("task", name, tasks, where=f"in --branch {text!r}")
        try:
            weight = float(value)
        except ValueError:
            raise NtlabError(
                f"weight {value!r} of {name} in --branch {text!r} is not a number"
            ) from None
        check_number(f"the weight of {name} in --branch {text!r}", weight, low=0)
        terms.append(LossTerm(name, (name,), weight))
    if len({t.name for t in terms}) != len(terms):
        raise NtlabError(f"--branch {text!r} names a task twice")
    if not active_terms(terms):
        raise NtlabError(f"--branch {text!r} gives every task weight 0")
    return BranchSpec(tuple(terms))


def validate_forkmerge(
    cfg: TrainConfig, branches: list[BranchSpec], opts: ForkMergeOptions
) -> None:
    """Every ForkMerge option, before the first step (a bad --grid-step would otherwise
    surface only at the first merge)."""
    if len(branches) < 2:
        raise NtlabError("ForkMerge needs at least two branches")
    if not 0 < opts.merge_every <= cfg.steps:
        raise NtlabError(
            f"--merge-every must be between 1 and --steps ({cfg.steps}), got {opts.merge_every}"
        )
    if opts.search not in ("auto", *SEARCHES):
        raise unknown_name("search", opts.search, ("auto", *SEARCHES))
    kind = opts.search_for(len(branches))
    if kind == "binary" and len(branches) != 2:
        raise NtlabError("--search binary works with exactly two branches; use grid or greedy")
    check_number("--grid-step", opts.grid_step, low=MIN_GRID_STEP, high=1)
    simplex_grid(1, opts.grid_step)  # the search's own check that --grid-step divides 1
    n, b = round(1 / opts.grid_step), len(branches)
    candidates = {"grid": math.comb(n + b - 1, b - 1), "greedy": 1 + (b - 1) * n}.get(kind, 0)
    if candidates > MAX_CANDIDATES:
        raise NtlabError(
            f"--grid-step {opts.grid_step:g} with {b} branches gives {candidates} candidate "
            f"merges per round under {kind} search (at most {MAX_CANDIDATES}); "
            "use a larger --grid-step" + (" or --search greedy" if kind == "grid" else "")
        )
    if opts.prune is not None and not opts.prune >= 1:
        raise NtlabError(f"--prune must keep at least 1 branch, got {opts.prune}")
    if opts.val_samples is not None:
        check_number("--val-samples", opts.val_samples, low=1, integer=True)
    check_number("--bn-batches", opts.bn_batches, low=1, high=MAX_STEPS, integer=True)
    if opts.optimizer_state not in OPTIMIZER_STATES:
        raise unknown_name("--optimizer-state", opts.optimizer_state, OPTIMIZER_STATES)
    if opts.merge_heads not in MERGE_HEADS:
        raise unknown_name("--merge-heads", opts.merge_heads, MERGE_HEADS)
    check_number("--merge-margin", opts.merge_margin, low=0, why="accuracy points")
    if branches[0].terms != (LossTerm(cfg.target, (cfg.target,), 1.0),):
        raise NtlabError(f"the first branch must be the target alone ({cfg.target}=1)")


@dataclass
class ForkMergeOutcome:
    model: torch.nn.Module
    branch_states: list[TrainState] = field(default_factory=list)
    merges: list[dict] = field(default_factory=list)
    search: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    excluded: list[dict] = field(default_factory=list)  # branches left out of a merge


def _weights_text(weights) -> str:
    return ";".join(f"{w:.4f}" for w in weights)


def fork_branches(
    cfg: TrainConfig, branches: list[BranchSpec], bench=None
) -> tuple[dict[str, TaskData], list[TrainState]]:
    """One seeded start θ_0 (with every branch's batch sources), forked once per branch.

    The target-alone branch sees exactly the model and the batches of the STL run of `cfg`.
    """
    device = resolve_device(cfg.device)
    terms = [t for b in branches for t in active_terms(list(b.terms))]
    tasks = list(dict.fromkeys(task for t in terms for task in t.tasks))
    data = (bench or benchmark_of(cfg)).load(tasks, device)
    base = TrainState.create(build_model(cfg, data, device), cfg.optim(), cfg.steps)
    attach_sources(base, terms, data, cfg.batch_size, cfg.seed)
    return data, [base.fork() for _ in branches]


def run_forkmerge(
    cfg: TrainConfig,
    branches: list[BranchSpec],
    opts: ForkMergeOptions,
    *,
    on_step: Callable[[int], None] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> ForkMergeOutcome:
    """Train the target with ForkMerge; checkpoint after every merge, resume from the last."""
    validate_forkmerge(cfg, branches, opts)
    bench = benchmark_of(cfg)
    data, states = fork_branches(cfg, branches, bench)
    probe = copy.deepcopy(states[0].model)
    target = data[cfg.target]
    x_val, y_val = target.x("val"), target.y("val")
    if opts.val_samples is not None and opts.val_samples < len(y_val):
        pick = torch.randperm(len(y_val), generator=seeded_generator(cfg.seed, "val-samples"))
        pick = pick[: opts.val_samples].to(y_val.device)
        x_val, y_val = x_val[pick], y_val[pick]

    def val_score(model: torch.nn.Module) -> float:
        return accuracy(*predict(model, cfg.target, x_val, y_val))

    out = ForkMergeOutcome(model=states[0].model)
    kept = list(range(len(branches)))
    round_index = 0
    if resume and checkpoint is not None and checkpoint.is_file():
        fix = "run again without --resume (or with --overwrite) to start over"
        saved = load_torch_file(checkpoint, fix, map_location=resolve_device(cfg.device))
        try:
            kept, round_index = saved["kept"], saved["round"]
            for b in kept:
                states[b].load_state_dict(saved["states"][b])
            out.merges, out.search = saved["merges"], saved["search"]
            out.metrics = saved["metrics"]
            out.excluded = saved.get("excluded", [])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = f"not a checkpoint of this run: {short_reason(exc)}"
            raise DamagedFileError(checkpoint, reason, fix) from None
    step = states[kept[0]].step
    merged_keys = _merged_keys(states[0].model, cfg.target, opts.merge_heads)
    while step < cfg.steps:
        dt = min(opts.merge_every, cfg.steps - step)
        diverged: dict[int, str] = {}
        for b in kept:

            def log(s: int, losses: dict[str, float], b: int = b) -> None:
                out.metrics.extend(
                    {
                        "step": s,
                        "task": f"branch{b}/{name}",
                        "split": "train",
                        "metric": "loss",
                        "value": v,
                    }
                    for name, v in losses.items()
                )

            try:
                train(
                    states[b],
                    list(branches[b].terms),
                    dt,
                    log_every=min(50, dt),
                    on_log=log,
                    on_step=on_step,
                    bn_batches=cfg.bn_batches,
                    loss_reduction=cfg.loss_reduction,
                )
            except NonFiniteError as exc:
                if b == 0:
                    raise
                diverged[b] = str(exc)
                states[b].step = step + dt  # the round's steps count for every branch
                states[b].apply_schedule()
            if b not in diverged and not finite_state(states[b].model.state_dict()):
                if b == 0:
                    raise NonFiniteError(
                        f"the target-alone branch has non-finite parameters after step "
                        f"{step + dt}; lower --lr"
                    )
                diverged[b] = f"non-finite parameters after step {step + dt}"
        step += dt
        alive = [b for b in kept if b not in diverged]
        space = MergeSpace([states[b].model.state_dict() for b in alive], keys=merged_keys)

        def score(weights, space: MergeSpace = space) -> float:
            space.load_into(probe, weights)
            return val_score(probe)

        # A branch's own score is the score of Λ = e_b (load_into is exact there): one
        # memoised scorer serves both, so the search never evaluates a corner twice.
        score = RecordingScore(score)
        corners = [tuple(float(i == j) for j in range(len(alive))) for i in range(len(alive))]
        own = {b: score(corner) for b, corner in zip(alive, corners)}
        result = _search(score, [own[b] for b in alive], opts)
        chosen = dict(zip(alive, result.weights))
        for b in kept:
            space.load_into(states[b].model, result.weights)
            if opts.optimizer_state == "reset" or b in diverged:
                states[b].optimizer.state.clear()
            if opts.bn_recalibrate:
                recalibrate_batchnorm(
                    states[b].model,
                    _target_batches(target, cfg, opts, round_index),
                    forward=states[b].model.features,
                )
        for b in kept:
            out.merges.append(
                {
                    "round": round_index,
                    "step": step,
                    "branch": b,
                    "task_weights": branches[b].describe(),
                    "val_acc": own.get(b),
                    "lambda": chosen.get(b, 0.0),
                    "excluded": diverged.get(b, ""),
                }
            )
        out.excluded += [
            {"round": round_index, "step": step, "branch": b, "reason": why}
            for b, why in diverged.items()
        ]
        for c, (weights, s) in enumerate(result.candidates):
            full = [0.0] * len(branches)
            for i, b in enumerate(alive):
                full[b] = weights[i]
            out.search.append(
                {
                    "round": round_index,
                    "step": step,
                    "candidate": c,
                    "weights": _weights_text(full),
                    "val_acc": s,
                    "chosen": tuple(weights) == tuple(result.weights),
                }
            )
        out.metrics += metric_rows(step, cfg.target, "val", {"acc": result.score})
        if opts.prune is not None and round_index == 0 and opts.prune < len(kept):
            weights = [chosen.get(b, 0.0) for b in kept]
            kept = [kept[i] for i in prune_branches(weights, opts.prune, protected=0)]
        round_index += 1
        if checkpoint is not None:
            _save(checkpoint, states, kept, round_index, out)
    final = states[kept[0]].model
    out.model = final
    out.branch_states = [states[b] for b in kept]
    per_split, kept = target_results(final, target)
    for split, values in per_split.items():
        out.metrics += metric_rows(step, cfg.target, split, values)
    out.results = {
        "target": cfg.target,
        "method": "forkmerge",
        "aux": cfg.aux,
        "steps": step,
        "rounds": round_index,
        "branches": [b.describe() for b in branches],
        "val_acc": per_split["val"]["acc"],
        "test_acc": per_split["test"]["acc"],
        **kept,  # which test images the merged model got right: the pairing of TG's noise
        "lambda_per_round": _lambda_per_round(out.merges, len(branches)),
        "merge_heads": opts.merge_heads,
        "excluded_branches": out.excluded,
        **data_notes(bench),
    }
    return out


def _merged_keys(model: torch.nn.Module, target: str, merge_heads: str) -> list[str] | None:
    """The state entries a merge combines: all (None), or the backbone and the target head."""
    if merge_heads == "all":
        return None
    head = f"heads.{model.head_index(target)}."
    return [k for k in model.state_dict() if not k.startswith("heads.") or k.startswith(head)]


def _target_batches(target, cfg: TrainConfig, opts: ForkMergeOptions, round_index: int):
    """The same target training batches for every branch of a round (own seeded stream)."""
    g = seeded_generator(cfg.seed, f"bn-recalibrate-{round_index}")
    x = target.x("train")
    for b in range(opts.bn_batches):
        idx = torch.randint(len(x), (cfg.batch_size,), generator=g)
        yield take(x, idx, target.y("train").device, seed=round_index * 100_003 + b)


def _search(score, own_scores: list[float], opts: ForkMergeOptions) -> SearchResult:
    branches = len(own_scores)
    if branches == 1:
        return SearchResult((1.0,), score((1.0,)), [((1.0,), score((1.0,)))])
    kind = opts.search_for(branches)
    if kind == "grid":
        return grid_search(score, branches, opts.grid_step, opts.merge_margin)
    if kind == "binary":
        return binary_search(score, margin=opts.merge_margin)
    return greedy_search(score, own_scores, round(1 / opts.grid_step), opts.merge_margin)


def _lambda_per_round(merges: list[dict], branches: int) -> list[list[float]]:
    rounds: dict[int, list[float]] = {}
    for row in merges:
        rounds.setdefault(row["round"], [0.0] * branches)[row["branch"]] = row["lambda"]
    return [rounds[r] for r in sorted(rounds)]


def _save(
    path: Path, states: list[TrainState], kept: list[int], round_index: int, out: ForkMergeOutcome
) -> None:
    save_torch_file(
        {
            "round": round_index,
            "kept": kept,
            "states": {b: states[b].state_dict() for b in kept},
            "merges": out.merges,
            "search": out.search,
            "metrics": out.metrics,
            "excluded": out.excluded,
        },
        path,
    )


# --- ForkMerge runs shared through the cache (pairwise and sweep run many) -----------------
# cached_forkmerge and forkmerge_cache_dir live in ntlab.core.cache (which builds on this
# module); they stay importable from here.

CACHE_NAMES = frozenset({"cached_forkmerge", "forkmerge_cache_dir", "forkmerge_entry"})


def __getattr__(name: str):
    if name in CACHE_NAMES:
        from ntlab.core import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
