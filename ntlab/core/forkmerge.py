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
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ntlab.catalog import (  # noqa: F401  (re-exported)
    BRANCH_EXEC,
    BRANCH_MODES,
    MERGE_HEADS,
    OPTIMIZER_STATES,
)
from ntlab.checks import MAX_STEPS, check_number
from ntlab.config import ForkMergeOptions  # noqa: F401  (re-exported)
from ntlab.core.evaluate import evaluate_on, score_fields, target_results
from ntlab.core.merge import MergeOp, MergeSpace, finite_state, recalibrate_batchnorm
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
from ntlab.storage import DamagedFileError, load_torch_file, save_torch_file, short_reason
from ntlab.tasks import orient

if TYPE_CHECKING:
    from ntlab.core.distributed import World

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


BRANCH_BUILDERS = {"per-task": per_task_branches, "joint": joint_branches}


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
    if opts.branch_exec not in BRANCH_EXEC:
        raise unknown_name("--branch-exec", opts.branch_exec, BRANCH_EXEC)
    if opts.branch_exec == "concurrent" and cfg.compile in ("default", "reduce-overhead"):
        raise NtlabError(
            f"--branch-exec concurrent with --compile {cfg.compile}: torch.compile is not "
            "thread-safe (its graphs would be compiled again, and the numbers move); use "
            "--compile captured or off with concurrent branches, or sequential ones"
        )
    check_number("--merge-margin", opts.merge_margin, low=0, why="accuracy points")
    merge_op(opts, cfg.seed)
    if branches[0].terms != (LossTerm(cfg.target, (cfg.target,), 1.0),):
        raise NtlabError(f"the first branch must be the target alone ({cfg.target}=1)")


def merge_op(opts: ForkMergeOptions, seed: int) -> MergeOp:
    """The merge operator of `opts`, checked; `dare`'s draws are seeded by the run's seed."""
    return MergeOp(opts.merge_op, opts.ties_k, opts.dare_p, seed).check()


@dataclass
class ForkMergeOutcome:
    model: torch.nn.Module
    branch_states: list[TrainState] = field(default_factory=list)
    merges: list[dict] = field(default_factory=list)
    search: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    excluded: list[dict] = field(default_factory=list)  # branches left out of a merge
    timings: dict[str, float] = field(default_factory=dict)  # seconds: train, exchange, search


def _weights_text(weights) -> str:
    return ";".join(f"{w:.4f}" for w in weights)


def fork_branches(
    cfg: TrainConfig, branches: list[BranchSpec], bench=None, device: torch.device | None = None
) -> tuple[dict[str, TaskData], list[TrainState]]:
    """One seeded start θ_0 (with every branch's batch sources), forked once per branch.

    The target-alone branch sees exactly the model and the batches of the STL run of `cfg`.
    `device` overrides cfg.device (a torchrun rank's own device).
    """
    device = device or resolve_device(cfg.device)
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
    world: World | None = None,
) -> ForkMergeOutcome:
    """Train the target with ForkMerge; checkpoint after every merge, resume from the last.

    With a `world` (torchrun, `ntlab.core.distributed`) this process trains only the
    branches it owns (b mod N); at each merge the branches are exchanged, so every rank
    merges the same states, and rank 0 alone reads and writes `checkpoint` (every rank
    passes the same path; rank 0 broadcasts what it read). Rank 0's outcome is the run's;
    the other ranks' outcome has no results.
    """
    validate_forkmerge(cfg, branches, opts)
    bench = benchmark_of(cfg)
    device = world.device if world is not None else resolve_device(cfg.device)
    data, states = fork_branches(cfg, branches, bench, device)
    probe = copy.deepcopy(states[0].model)
    target = data[cfg.target]
    x_val, y_val = target.x("val"), target.y("val")
    if opts.val_samples is not None and opts.val_samples < len(y_val):
        pick = torch.randperm(len(y_val), generator=seeded_generator(cfg.seed, "val-samples"))
        pick = pick[: opts.val_samples].to(y_val.device)
        x_val, y_val = x_val[pick], y_val[pick]

    spec = target.spec
    sign = 1.0 if spec.higher_is_better else -1.0  # searches maximise; records keep the metric

    def val_score(model: torch.nn.Module) -> float:
        values = evaluate_on(model, cfg.target, spec, x_val, y_val, pair=False)[0]
        return orient(values[spec.primary], spec.higher_is_better)

    out = ForkMergeOutcome(model=states[0].model)
    out.timings = {"train": 0.0, "exchange": 0.0, "search": 0.0}
    kept = list(range(len(branches)))
    round_index = 0
    root = world is None or world.is_root
    if resume and checkpoint is not None:
        if world is None:
            saved = _restore(checkpoint, states, out, device) if checkpoint.is_file() else None
        else:
            saved = world.root_decides(
                lambda: (
                    _restore(checkpoint, states, out, torch.device("cpu"))
                    if checkpoint.is_file()
                    else None
                )
            )
            if saved is not None and not world.is_root:
                _restore_from(saved, states, out)
        if saved is not None:
            kept, round_index = saved["kept"], saved["round"]
    step = states[kept[0]].step
    merged_keys = _merged_keys(states[0].model, cfg.target, opts.merge_heads)
    op = merge_op(opts, cfg.seed)
    while step < cfg.steps:
        dt = min(opts.merge_every, cfg.steps - step)
        # θ_0 of this round's deltas: every branch starts the round from the last merge (or
        # the common start); under torchrun a rank's own branches are the ones merged there
        base = None
        if op.uses_deltas:
            own = [b for b in kept if world is None or world.owns(b)] or kept
            base = {k: v.detach().clone() for k, v in states[own[0]].model.state_dict().items()}
        diverged: dict[int, str] = {}
        rows: dict[int, list[dict]] = {b: [] for b in kept}
        fatal: NonFiniteError | None = None
        started = time.perf_counter()
        if world is not None:
            world.phase = f"the training of round {round_index + 1}"
        mine = kept if world is None else [b for b in kept if world.owns(b)]

        at_once = len(mine) if opts.branch_exec == "concurrent" else 1

        def train_branch(
            b: int, rows: dict = rows, dt: int = dt, at_once: int = at_once
        ) -> NonFiniteError | None:
            def log(at: int, losses: dict[str, float]) -> None:
                rows[b].extend(
                    {
                        "step": at,
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
                    concurrent=at_once,
                )
            except NonFiniteError as diverged_loss:
                return diverged_loss
            return None

        for b, exc in run_branches(train_branch, mine, opts.branch_exec, device):
            if exc is not None:
                if b == 0:
                    if world is None:
                        raise exc
                    fatal = exc  # told to the other ranks first, then raised
                    break
                diverged[b] = str(exc)
                states[b].step = step + dt  # the round's steps count for every branch
                states[b].apply_schedule()
            if b not in diverged and not finite_state(states[b].model.state_dict()):
                if b == 0:
                    fatal = NonFiniteError(
                        f"the target-alone branch has non-finite parameters after step "
                        f"{step + dt}; lower --lr"
                    )
                    if world is None:
                        raise fatal
                    break
                diverged[b] = f"non-finite parameters after step {step + dt}"
        out.timings["train"] += time.perf_counter() - started
        step += dt
        if world is not None:
            started = time.perf_counter()
            world.phase = f"the merge of round {round_index + 1}"
            reports = world.all_gather_object(
                {
                    "diverged": diverged,
                    "rows": {b: r for b, r in rows.items() if world.owns(b)},
                    "fatal": fatal is not None,
                }
            )
            if fatal is not None:
                raise fatal
            if any(r["fatal"] for r in reports):
                from ntlab.core.distributed import PeerFailed

                raise PeerFailed("the target-alone branch diverged (rank 0 says how)")
            rows, diverged = {}, {}
            for r in reports:
                rows.update(r["rows"])
                diverged.update(r["diverged"])
            diverged = {b: diverged[b] for b in kept if b in diverged}
            for b in kept:
                world.broadcast_state(states[b].model.state_dict(), src=world.owner(b))
                if not world.owns(b):  # this rank's copy of another's branch: at the same step
                    states[b].step = step
                    states[b].apply_schedule()
            out.timings["exchange"] += time.perf_counter() - started
        for b in kept:
            out.metrics.extend(rows[b])
        started = time.perf_counter()
        alive = [b for b in kept if b not in diverged]
        space = MergeSpace(
            [states[b].model.state_dict() for b in alive],
            keys=merged_keys,
            op=op,
            base=base,
            draw=f"round {round_index}",
        )

        def score(weights, space: MergeSpace = space) -> float:
            space.load_into(probe, weights)
            return val_score(probe)

        # A branch's own score is the score of Λ = e_b (load_into is exact there): one
        # memoised scorer serves both, so the search never evaluates a corner twice.
        # Under torchrun rank 0 searches alone and tells Λ*: the other ranks would only
        # compete for its CPU cores, and all continue from the same θ* whatever their device.
        if root:
            score = RecordingScore(score)
            corners = [tuple(float(i == j) for j in range(len(alive))) for i in range(len(alive))]
            own = {b: score(corner) for b, corner in zip(alive, corners)}
            result = _search(score, [own[b] for b in alive], opts)
            weights = tuple(result.weights)
        if world is not None:
            weights = world.broadcast_object(weights if root else None)
        chosen = dict(zip(alive, weights))
        # rank 0 merges every branch (its copies go into the checkpoint); the others only
        # their own (their copies of the rest are overwritten at the next exchange)
        for b in kept if root else [b for b in kept if world.owns(b)]:
            space.load_into(states[b].model, weights)
            if opts.optimizer_state == "reset" or b in diverged:
                states[b].optimizer.state.clear()
            if opts.bn_recalibrate:
                recalibrate_batchnorm(
                    states[b].model,
                    _target_batches(target, cfg, opts, round_index),
                    forward=states[b].model.features,
                )
        out.timings["search"] += time.perf_counter() - started
        if root:  # the run's records (rank 0 writes them)
            for b in kept:
                out.merges.append(
                    {
                        "round": round_index,
                        "step": step,
                        "branch": b,
                        "task_weights": branches[b].describe(),
                        "val_score": None if b not in own else sign * own[b],
                        "lambda": chosen.get(b, 0.0),
                        "excluded": diverged.get(b, ""),
                    }
                )
            out.excluded += [
                {"round": round_index, "step": step, "branch": b, "reason": why}
                for b, why in diverged.items()
            ]
            for c, (cand, s) in enumerate(result.candidates):
                full = [0.0] * len(branches)
                for i, b in enumerate(alive):
                    full[b] = cand[i]
                out.search.append(
                    {
                        "round": round_index,
                        "step": step,
                        "candidate": c,
                        "weights": _weights_text(full),
                        "val_score": sign * s,
                        "chosen": tuple(cand) == weights,
                    }
                )
            out.metrics += metric_rows(step, cfg.target, "val", {spec.primary: sign * result.score})
        if opts.prune is not None and round_index == 0 and opts.prune < len(kept):
            pruned = [chosen.get(b, 0.0) for b in kept]
            kept = [kept[i] for i in prune_branches(pruned, opts.prune, protected=0)]
        round_index += 1
        if checkpoint is not None:
            if world is None:
                _save(checkpoint, _checkpoint_states(states, kept), kept, round_index, out)
            else:
                started = time.perf_counter()
                _save_shared(world, checkpoint, states, kept, round_index, out)
                out.timings["exchange"] += time.perf_counter() - started
    final = states[kept[0]].model
    out.model = final
    out.branch_states = [states[b] for b in kept]
    if not root:
        return out
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
        **score_fields(spec, per_split),
        **kept,  # which test images the merged model got right: the pairing of TG's noise
        "lambda_per_round": _lambda_per_round(out.merges, len(branches)),
        "merge_heads": opts.merge_heads,
        "merge_op": op.describe(),
        "excluded_branches": out.excluded,
        **data_notes(bench),
    }
    return out


def run_branches(
    train_branch: Callable[[int], NonFiniteError | None],
    branches: list[int],
    mode: str,
    device: torch.device,
) -> Iterator[tuple[int, NonFiniteError | None]]:
    """(branch, what its round's training raised) for each branch, in branch order.

    `sequential`: one after the other, lazily (a caller that stops at a failed branch trains
    no further one). `concurrent`: every branch at once, one thread each and, on CUDA, one
    stream each, so the device overlaps their kernels; each branch's computation is the
    sequential one, so the numbers are the same. Other exceptions propagate either way.
    """
    if mode == "sequential" or len(branches) < 2:
        for b in branches:
            yield b, train_branch(b)
        return
    streams = {}
    if device.type == "cuda":
        main = torch.cuda.current_stream(device)
        for b in branches:
            streams[b] = torch.cuda.Stream(device)
            streams[b].wait_stream(main)  # the branches' tensors were made on `main`

    def on_own_stream(b: int) -> NonFiniteError | None:
        if b not in streams:
            return train_branch(b)
        with torch.cuda.stream(streams[b]):
            outcome = train_branch(b)
        streams[b].synchronize()
        return outcome

    with ThreadPoolExecutor(len(branches), thread_name_prefix="ntlab-branch") as pool:
        outcomes = list(pool.map(on_own_stream, branches))
    yield from zip(branches, outcomes)


def _restore(
    checkpoint: Path, states: list[TrainState], out: ForkMergeOutcome, device: torch.device
) -> dict:
    """Load the checkpoint into the branches and the outcome; the checkpoint as read."""
    fix = "run again without --resume (or with --overwrite) to start over"
    saved = load_torch_file(checkpoint, fix, map_location=device)
    try:
        _restore_from(saved, states, out)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = f"not a checkpoint of this run: {short_reason(exc)}"
        raise DamagedFileError(checkpoint, reason, fix) from None
    return saved


def _restore_from(saved: dict, states: list[TrainState], out: ForkMergeOutcome) -> None:
    for b in saved["kept"]:
        states[b].load_state_dict(saved["states"][b])
    out.merges, out.search = list(saved["merges"]), list(saved["search"])
    out.metrics = list(saved["metrics"])
    out.excluded = list(saved.get("excluded", []))


def _checkpoint_states(states: list[TrainState], kept: list[int]) -> dict[int, dict]:
    return {b: states[b].state_dict() for b in kept}


def _save_shared(
    world: World,
    path: Path,
    states: list[TrainState],
    kept: list[int],
    round_index: int,
    out: ForkMergeOutcome,
) -> None:
    """Rank 0 writes the checkpoint of every branch: the merged models it holds, and each
    branch's optimiser moments and batch positions from the rank that trains it. The
    barrier after it means no rank goes on before the checkpoint is complete on disk."""
    from ntlab.core.distributed import to_cpu

    mine = {
        b: to_cpu(
            {
                "optimizer": s.optimizer.state_dict(),
                "sources": s.state_dict()["sources"],
                **({"scaler": s.scaler.state_dict()} if s.scaler is not None else {}),
            }
        )
        for b in kept
        if world.owns(b) and not world.is_root
        for s in [states[b]]
    }
    gathered = world.gather_to_root(mine)
    if world.is_root:
        full = _checkpoint_states(states, kept)
        for part in gathered:
            for b, extra in part.items():
                full[b] = {**full[b], **extra}
        _save(path, full, kept, round_index, out)
    world.barrier()


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
    path: Path, states: dict[int, dict], kept: list[int], round_index: int, out: ForkMergeOutcome
) -> None:
    save_torch_file(
        {
            "round": round_index,
            "kept": kept,
            "states": states,
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
