"""The Python API: ntlab on your own backbone, heads, losses, metrics and data.

    import ntlab
    tasks = [
        ntlab.Task("main", train=(x, y), val=(xv, yv), test=(xt, yt), head=nn.Linear(32, 3),
                   loss=F.cross_entropy, metrics={"acc": ntlab.metrics.accuracy}),
        ntlab.Task("aux", train=..., val=..., test=..., head=nn.Linear(32, 1),
                   loss=F.mse_loss, metrics={"mse": mse}, higher_is_better=False),
    ]
    result = ntlab.forkmerge(backbone, tasks, target="main", steps=300, merge_every=100)

Every call runs the same core as the command line: the tasks become a benchmark and the
backbone a registered backbone for the length of the call, and the call builds the same
`TrainConfig` the CLI builds, so a training of the API and one of the CLI differ only in
what the user brought. The backbone and the heads are copied, never modified: the same call
twice gives the same numbers. Trainings inside one call are shared through a run cache of
their own (a sweep trains its STL run once), which is deleted when the call returns — user
code cannot be fingerprinted, so nothing is reused across calls.

Data: a pair of tensors (inputs, targets) per split, or a `torch.utils.data.Dataset` of
(input, target) pairs (read once into tensors). Float inputs are used as given; uint8
inputs are images and are scaled to [−1, 1] as the built-in benchmarks' are.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ntlab.config import GCS_LAMS, SWEEP_LAMS, ForkMergeOptions, GcsOptions, TrainConfig
from ntlab.errors import NtlabError
from ntlab.tasks import CUSTOM, FunctionEvaluator, TaskSpec

_SESSION = itertools.count()


def _split(value: Any, task: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of one split from a pair of tensors or a Dataset of pairs."""
    if isinstance(value, tuple | list) and len(value) == 2:
        x, y = value
    elif isinstance(value, torch.utils.data.Dataset):
        items = [value[i] for i in range(len(value))]  # type: ignore[arg-type]
        if not items:
            raise NtlabError(f"task {task}: the {split} dataset is empty")
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.stack([torch.as_tensor(item[1]) for item in items])
    else:
        raise NtlabError(
            f"task {task}: {split} must be (inputs, targets) tensors or a Dataset of pairs, "
            f"got {type(value).__name__}"
        )
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if len(x) != len(y) or len(x) == 0:
        raise NtlabError(
            f"task {task}: {split} has {len(x)} inputs and {len(y)} targets; give as many "
            "of each, at least one"
        )
    for name, t in (("inputs", x), ("targets", y)):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NtlabError(f"task {task}: the {split} {name} hold NaN or inf; clean them")
    return x, y


@dataclass
class Task:
    """One task: its name, its data (train / val / test), a head, a loss, and metrics.

    `head` is a module (copied for each model) or a callable from the backbone's output
    size to a module. `loss(prediction, target)` returns the mean loss of a batch.
    `metrics` maps names to functions (prediction, target) → number, computed over a whole
    split; `higher_is_better` is one bool for all of them or one per metric; `primary`
    (default: the first metric) is what ntlab compares — TG, ForkMerge's merges, the grid
    search (`csd` and `tsne`, which read a classifier's confidence, take the built-in
    benchmarks only).
    """

    name: str
    train: Any
    val: Any
    test: Any
    head: nn.Module | Callable[[int], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: Mapping[str, Callable]
    higher_is_better: bool | Mapping[str, bool] = True
    primary: str | None = None
    splits: dict = field(init=False, repr=False)
    spec: TaskSpec = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "," in self.name:
            raise NtlabError(
                f"a task name must be a non-empty string without commas, got {self.name!r}"
            )
        if not self.metrics:
            raise NtlabError(f"task {self.name} needs at least one metric")
        if not callable(self.loss):
            raise NtlabError(
                f"task {self.name}: loss must be a function (prediction, target) → loss"
            )
        for metric, fn in self.metrics.items():
            if not callable(fn):
                raise NtlabError(f"task {self.name}: metric {metric} is not a function")
        if isinstance(self.higher_is_better, Mapping):
            missing = [m for m in self.metrics if m not in self.higher_is_better]
            if missing:
                raise NtlabError(f"task {self.name}: higher_is_better does not say {missing[0]}")
            directions = {m: bool(self.higher_is_better[m]) for m in self.metrics}
        else:
            directions = dict.fromkeys(self.metrics, bool(self.higher_is_better))
        primary = self.primary or next(iter(self.metrics))
        if primary not in self.metrics:
            raise NtlabError(f"task {self.name}: primary {primary!r} is not one of its metrics")
        if not (isinstance(self.head, nn.Module) or callable(self.head)):
            raise NtlabError(f"task {self.name}: head must be a module or a function size → module")
        self.splits = {s: _split(getattr(self, s), self.name, s) for s in ("train", "val", "test")}
        metrics = dict(self.metrics)
        self.spec = TaskSpec(
            kind=CUSTOM,
            head=_head_factory(self.head),
            loss=self.loss,
            metrics=directions,
            primary=primary,
            evaluator=lambda: FunctionEvaluator(metrics),
            description="user task",
        )


def _head_factory(head) -> Callable[[int, tuple[int, ...]], nn.Module]:
    if isinstance(head, nn.Module):
        return lambda _features, _shape: copy.deepcopy(head)
    return lambda features, _shape: head(features)


class _TaskSet:
    """The user's tasks as a benchmark of the training core (registered for one call)."""

    options: tuple[str, ...] = ()
    description = "tasks given through the Python API"

    def __init__(self, name: str, tasks: Sequence[Task]) -> None:
        self.name = name
        self.by_name = {t.name: t for t in tasks}

    def __call__(self, **_: object) -> _TaskSet:  # the registry builds benchmarks by calling
        return self

    def tasks(self) -> list[str]:
        return list(self.by_name)

    def specs(self) -> dict[str, TaskSpec]:
        return {name: task.spec for name, task in self.by_name.items()}

    def fingerprint(self) -> str:
        return self.name  # unique per call: nothing is reused across calls

    def load(self, tasks: list[str], device: torch.device | str = "cpu") -> dict:
        from ntlab.data.benchmark import TaskData

        out = {}
        for name in tasks:
            task = self.by_name[name]
            splits = {s: (x.to(device), y.to(device)) for s, (x, y) in task.splits.items()}
            out[name] = TaskData(name, None, splits, task.spec)
        return out

    def describe(self) -> list[dict]:
        return []


def _backbone_factory(backbone: nn.Module):
    """A registered-backbone factory that returns a copy of the user's module, with
    `out_features` measured on one input of the data's shape when the module does not
    say it."""
    template = copy.deepcopy(backbone)

    def build(input_shape: tuple[int, ...] | None = None, **_: object) -> nn.Module:
        model = copy.deepcopy(template)
        if not hasattr(model, "out_features"):
            if input_shape is None:
                raise NtlabError("give the backbone an `out_features` attribute")
            was = model.training
            model.eval()
            with torch.no_grad():
                out = model(torch.zeros(1, *input_shape))
            model.train(was)
            if out.dim() != 2:
                raise NtlabError(
                    f"the backbone's output has shape {tuple(out.shape)}; give it an "
                    "`out_features` attribute, or return [batch, features]"
                )
            model.out_features = int(out.shape[1])
        return model

    return build


@dataclass(frozen=True)
class _Names:
    """What one API call trains on: a benchmark and a backbone, by their registered names."""

    benchmark: str
    backbone: str


@contextlib.contextmanager
def _session(backbone: nn.Module | str, tasks: Sequence[Task] | str) -> Iterator[_Names]:
    """The benchmark and backbone of one API call. The user's tasks and module are
    registered under a fresh name for the call's length, with the run cache in a temporary
    folder (their code cannot be fingerprinted); a registered benchmark (`tasks="digits"`)
    and backbone (`backbone="cnn"`) are used as the command line uses them, run cache
    included."""
    from ntlab import paths
    from ntlab.data.benchmark import BENCHMARKS
    from ntlab.models import BACKBONES

    if isinstance(tasks, str):
        BENCHMARKS.get(tasks)  # unknown names fail with the choices
    else:
        tasks = list(tasks)
        if not tasks or not all(isinstance(t, Task) for t in tasks):
            raise NtlabError("tasks must be a benchmark's name or a non-empty list of ntlab.Task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise NtlabError("two tasks have the same name")
    if isinstance(backbone, str):
        BACKBONES.get(backbone)
    elif not isinstance(backbone, nn.Module):
        kind = type(backbone).__name__
        raise NtlabError(f"backbone must be a torch.nn.Module or a backbone's name, got {kind}")
    if isinstance(tasks, str) and isinstance(backbone, str):
        yield _Names(tasks, backbone)
        return
    name = f"api-{next(_SESSION)}-{id(tasks):x}"
    bench_name = tasks if isinstance(tasks, str) else name
    backbone_name = backbone if isinstance(backbone, str) else name
    if not isinstance(tasks, str):
        BENCHMARKS.register(name)(_TaskSet(name, tasks))
    if not isinstance(backbone, str):
        BACKBONES.register(name)(_backbone_factory(backbone))
    folder = Path(tempfile.mkdtemp(prefix="ntlab-api-"))
    try:
        with paths.cache_override(folder):
            yield _Names(bench_name, backbone_name)
    finally:
        BENCHMARKS.unregister(name)
        BACKBONES.unregister(name)
        shutil.rmtree(folder, ignore_errors=True)


def _options(options: dict, *allowed: type) -> list[dict]:
    """Split keyword `options` among dataclasses (TrainConfig, ForkMergeOptions) by their
    fields: every option of a training is open to the API, as to the command line."""
    from dataclasses import fields

    names = [{f.name for f in fields(cls)} for cls in allowed]
    reserved = {"target", "aux", "benchmark", "backbone", "method"}
    unknown = [k for k in options if k in reserved or not any(k in n for n in names)]
    if unknown:
        raise NtlabError(
            f"unknown option {unknown[0]!r}; options are the fields of "
            + " and ".join(cls.__name__ for cls in allowed)
        )
    return [{k: v for k, v in options.items() if k in n} for n in names]


def _config(names: _Names, target: str, aux, method: str, **kw) -> TrainConfig:
    from ntlab.core.runner import benchmark_of, resolve_aux, validate

    cfg = TrainConfig(
        target=target, method=method, benchmark=names.benchmark, backbone=names.backbone, **kw
    )
    bench = benchmark_of(cfg)
    canonical = getattr(bench, "canonical", None)  # DomainNet's one-letter names
    if canonical is not None:
        target = canonical(target)
        aux = [canonical(a) for a in aux] if isinstance(aux, list | tuple) else aux
    cfg = TrainConfig(
        target=target,
        method=method,
        aux=resolve_aux(bench.tasks(), target, aux),
        benchmark=names.benchmark,
        backbone=names.backbone,
        **kw,
    )
    validate(cfg)
    return cfg


def _train_kw(steps, batch_size, lr, optimizer, weight_decay, schedule, seed, device, threads):
    return {
        "steps": steps, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
        "weight_decay": weight_decay, "schedule": schedule, "seed": seed, "device": device,
        "threads": threads, "eval_every": max(1, min(100, steps)),
    }  # fmt: skip


@dataclass
class Result:
    """What a training gives back: the trained (or merged) `model` (a copy: yours is
    untouched), `metrics` per split of the target ({"val": {...}, "test": {...}}), the
    target's TG over STL in its primary metric (`transfer_gain`, with `tg_se` and
    `effect`), the run's `results` (as results.json), and for ForkMerge `lambdas` (one row
    per round and branch)."""

    model: nn.Module
    metrics: dict[str, dict[str, float]]
    transfer_gain: float | None
    tg_se: float | None
    effect: str | None
    results: dict
    lambdas: Any = None
    out: Path | None = None


def _result(model, results: dict, lambdas=None, out=None) -> Result:
    return Result(
        model=model,
        metrics=results.get("target_metrics", {}),
        transfer_gain=results.get("transfer_gain"),
        tg_se=results.get("tg_se"),
        effect=results.get("effect"),
        results=results,
        lambdas=lambdas,
        out=out,
    )


def _write_dir(out, command: str, record: dict, tables, results: dict, model=None):
    """The run directory the CLI writes for `command`: config and status, the tables, the
    model, results.json last, and the report."""
    if out is None:
        return None
    from ntlab.cli.common import complete
    from ntlab.runs import RunDir
    from ntlab.storage import save_torch_file

    run = RunDir(Path(out), overwrite=True)
    run.start(command, {**record, "api": True})
    for name, table in tables:
        run.write_table(name, table)
    if model is not None:
        save_torch_file(model.state_dict(), run.path / "model.pt")
    complete(run, results, "png")
    return run.path


def _write_run(out, command: str, cfg: TrainConfig, results: dict, model, metrics_rows, extra=()):
    """A training's run directory (`train`, `forkmerge train`): its metrics and model."""
    import pandas as pd

    tables = [("metrics.csv", pd.DataFrame(metrics_rows)), *extra]
    return _write_dir(out, command, {"train": asdict(cfg)}, tables, results, model)


def train(
    backbone: nn.Module,
    tasks: Sequence[Task],
    target: str,
    method: str = "ew",
    aux: Sequence[str] | str | None = None,
    *,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    lam: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    baseline: bool = True,
    out: str | Path | None = None,
    **options: Any,
) -> Result:
    """Train `target` with a registered weighting method (`ntlab methods` lists them: stl,
    ew, fixed, uw, …, auto-lambda) and, unless `baseline=False`, its STL run of the same
    budget and seed, giving the TG in the target's primary metric with its noise. Any other
    field of `ntlab.config.TrainConfig` is an option (e.g. `select="best-val"`,
    `eval_every=50`, `loss_reduction="mean"`)."""
    from ntlab.cli.common import with_delta_m
    from ntlab.core.cache import stl_baseline, trained_model
    from ntlab.core.runner import with_transfer_gain

    budget = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
        "weight_decay": weight_decay, "schedule": schedule, "seed": seed, "device": device,
        "threads": threads, "baseline": baseline, "out": out,
    }  # fmt: skip
    if method == "forkmerge":  # the procedures of `ntlab methods`, as `ntlab train` runs them
        return forkmerge(backbone, tasks, target, aux, **budget, **options)
    kw = _train_kw(steps, batch_size, lr, optimizer, weight_decay, schedule, seed, device, threads)
    lams = options.pop("lams", SWEEP_LAMS) if method == "grid-search" else None
    kw |= _options(options, TrainConfig)[0]
    with _session(backbone, tasks) as names:
        if method == "grid-search":
            cfg, chosen = _grid_search(names, target, aux, lams, seed, kw)
        else:
            cfg, chosen = _config(names, target, aux, method, lam=lam, **kw), None
        model, _, results, _ = trained_model(cfg)
        if chosen is not None:
            results = {**results, "method": "grid-search", "lam": chosen}
        if method != "stl" and baseline:
            stl, source = stl_baseline(cfg)
            results = with_delta_m(with_transfer_gain(results, stl, source), stl)
        rows = _cache_rows(cfg)
        path = _write_run(out, "train", cfg, results, model, rows)
    return _result(model, results, out=path)


def _grid_search(names, target, aux, lams, seed, kw) -> tuple[TrainConfig, float]:
    """The paper's grid-search baseline: the fixed-λ training whose λ is best on validation."""
    from ntlab.analysis.common import check_lams
    from ntlab.analysis.sweep import fixed_config, grid_search_choice, lambda_grid_table

    base = _config(names, target, aux, "fixed", **kw)
    table = lambda_grid_table(base, check_lams(tuple(lams)), [seed])
    lam = float(grid_search_choice(table).iloc[0]["lam"])
    return fixed_config(base, lam, seed), lam


def _cache_rows(cfg: TrainConfig) -> list[dict]:
    import csv

    from ntlab.core.cache import METRICS_FILE, run_cache_dir

    try:
        with (run_cache_dir(cfg) / METRICS_FILE).open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def forkmerge(
    backbone: nn.Module,
    tasks: Sequence[Task],
    target: str,
    aux: Sequence[str] | str | None = None,
    *,
    steps: int = 500,
    merge_every: int | None = None,
    branches: str = "per-task",
    search: str = "auto",
    grid_step: float = 0.1,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    baseline: bool = True,
    out: str | Path | None = None,
    **options: Any,
) -> Result:
    """Train `target` with ForkMerge: `branches="per-task"` (the target alone plus one
    branch per auxiliary task, Eq. 12) or `"joint"` (Algorithm 1), merged every
    `merge_every` steps (default: a quarter of `steps`) on the target's primary validation
    metric. `result.lambdas` has one row per round and branch. Any other field of
    `TrainConfig` or `ForkMergeOptions` is an option (e.g. `prune=2`, `merge_heads="shared"`)."""
    import pandas as pd

    from ntlab.cli.common import with_delta_m
    from ntlab.core.cache import stl_baseline
    from ntlab.core.forkmerge import (
        BRANCH_BUILDERS,
        run_forkmerge,
    )
    from ntlab.core.runner import with_transfer_gain

    if branches not in BRANCH_BUILDERS:
        raise NtlabError(f"branches must be one of {', '.join(BRANCH_BUILDERS)}, got {branches!r}")
    kw = _train_kw(steps, batch_size, lr, optimizer, weight_decay, schedule, seed, device, threads)
    train_opts, fm_opts = _options(options, TrainConfig, ForkMergeOptions)
    kw |= train_opts
    opts = ForkMergeOptions(
        merge_every=merge_every or max(1, round(steps / 4)),
        search=search,
        grid_step=grid_step,
        **{k: v for k, v in fm_opts.items() if k not in ("merge_every", "search", "grid_step")},
    )
    with _session(backbone, tasks) as names:
        cfg = _config(names, target, aux, "ew", **kw)
        specs = BRANCH_BUILDERS[branches](cfg.target, cfg.aux)
        outcome = run_forkmerge(cfg, specs, opts)
        results = outcome.results
        if baseline:
            stl, source = stl_baseline(cfg)
            results = with_delta_m(with_transfer_gain(results, stl, source), stl)
        lambdas = pd.DataFrame(outcome.merges)
        path = _write_run(
            out, "forkmerge", cfg, results, outcome.model, outcome.metrics,
            [("merges.csv", lambdas), ("search.csv", pd.DataFrame(outcome.search))],
        )  # fmt: skip
    return _result(outcome.model, results, lambdas, path)


def gcs(
    backbone: nn.Module,
    tasks: Sequence[Task],
    target: str,
    aux: Sequence[str] | str | None = None,
    *,
    steps: int = 500,
    lams: Sequence[float] = GCS_LAMS,
    batches: int = 64,
    eta: float = 0.01,
    probe_steps: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    out: str | Path | None = None,
):
    """Gradient cosine similarity vs the one-step TG (paper Fig. 2) after an STL training
    of `steps`: a DataFrame with one row per (batch pair, λ), as the CLI's gcs.csv
    (`out=DIR`: also the run directory and report of `ntlab gcs`)."""
    from ntlab.analysis.gcs import fit_heads, gcs_summary, gcs_table
    from ntlab.core.cache import trained_model
    from ntlab.core.runner import metric_fields

    kw = _train_kw(steps, batch_size, lr, "adam", 0.0, "cosine", seed, device, threads)
    gopts = GcsOptions(
        lams=tuple(lams), batches=batches, eta=eta, batch_size=batch_size,
        probe_steps=probe_steps, seed=seed,
    )  # fmt: skip
    gopts.check()
    with _session(backbone, tasks) as names:
        cfg = _config(names, target, aux, "stl", **kw)
        aux_names = _config(names, target, aux, "ew", **kw).aux
        model, data, stl, _ = trained_model(cfg, tasks=aux_names)
        fit_heads(model, data, aux_names, probe_steps, batch_size, seed, lr=10 * lr)
        table, image_se = gcs_table(model, data, cfg.target, aux_names, gopts)
        if out is not None:
            results = {
                "target": cfg.target, "aux": aux_names, "aux_kind": gopts.aux_kind,
                "eta": eta, "pretrain": {"steps": steps, "val_score": stl["val_score"]},
                **metric_fields(cfg), **gcs_summary(table, image_se),
            }  # fmt: skip
            record = {"train": asdict(cfg), "gcs": asdict(gopts)}
            _write_dir(out, "gcs", record, [("gcs.csv", table)], results)
    return table


def sweep(
    backbone: nn.Module,
    tasks: Sequence[Task],
    target: str,
    aux: Sequence[str] | str | None = None,
    *,
    lams: Sequence[float] = SWEEP_LAMS,
    seeds: Sequence[int] = (0,),
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    device: str = "cpu",
    threads: int | None = None,
    out: str | Path | None = None,
    **options: Any,
):
    """Fixed-λ joint training of Eq. 1 over `lams` and `seeds`: a DataFrame with one row
    per (λ, seed) — val/test score of the target, TG against λ = 0 (STL) with its noise,
    as the CLI's sweep.csv (`out=DIR`: also the run directory and report of `ntlab
    sweep`). Any other field of `TrainConfig` is an option."""
    from ntlab.analysis.common import check_lams
    from ntlab.analysis.sweep import lambda_grid_table, sweep_summary
    from ntlab.core.runner import metric_fields

    check_lams(tuple(lams))
    kw = _train_kw(steps, batch_size, lr, optimizer, weight_decay, schedule, 0, device, threads)
    kw |= _options(options, TrainConfig)[0]
    with _session(backbone, tasks) as names:
        base = _config(names, target, aux, "fixed", **kw)
        table = lambda_grid_table(base, list(lams), list(seeds))
        if out is not None:
            results = {
                "target": base.target, "aux": base.aux, "steps": steps,
                **metric_fields(base), **sweep_summary(table, None),
            }  # fmt: skip
            record = {"train": asdict(base), "lams": list(lams), "seeds": list(seeds)}
            _write_dir(out, "sweep", record, [("sweep.csv", table.assign(method="fixed"))], results)
        return table
