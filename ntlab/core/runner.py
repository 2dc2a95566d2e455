"""From a resolved config to a trained, evaluated run — the path every command shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ntlab.catalog import SELECTIONS  # noqa: F401  (re-exported)
from ntlab.config import (  # noqa: F401  (re-exported: the validation lives with the config)
    TrainConfig,
    check_cnn_width,
    resolve_aux,
    resolve_device,
    validate,
)
from ntlab.core.evaluate import evaluate_paired, pairing_fields, score, score_fields
from ntlab.core.rules import Rule, RuleContext
from ntlab.core.speed import configure, resolved_speed
from ntlab.core.state import TrainState
from ntlab.core.train import (
    LossTerm,
    active_terms,
    attach_sources,
    train,
)
from ntlab.data import TaskData, get_benchmark
from ntlab.data.sampler import BatchSource, seeded_generator
from ntlab.errors import NtlabError
from ntlab.methods import get_method
from ntlab.metrics import gain, gain_fields, tg_noise
from ntlab.models import BACKBONES, MultiTaskModel
from ntlab.storage import DamagedFileError, load_torch_file, read_json_object, save_torch_file


def benchmark_of(cfg: TrainConfig):
    """The benchmark of `cfg`, with its data options."""
    return get_benchmark(cfg.benchmark, **cfg.data_options())


def target_spec(cfg: TrainConfig):
    """The target's TaskSpec without loading any data (a classification where the
    benchmark declares no specs: digits and image lists)."""
    from ntlab.tasks import classification_task

    specs = getattr(benchmark_of(cfg), "specs", None)
    return specs()[cfg.target] if specs else classification_task(0)


def metric_fields(cfg: TrainConfig) -> dict:
    """`metric` and `higher_is_better` of the target's primary metric, and the metrics Δm
    averages (`delta_m_over`, each with its direction), for summaries."""
    spec = target_spec(cfg)
    return {
        "metric": spec.primary,
        "higher_is_better": spec.higher_is_better,
        "delta_m_over": spec.delta_m_over,
    }


def resolved_threads(cfg: TrainConfig) -> int:
    """The intra-op thread count a training of `cfg` runs with (part of its identity: CPU
    results depend on it)."""
    return cfg.threads if cfg.threads is not None else torch.get_num_threads()


def apply_threads(cfg: TrainConfig) -> TrainConfig:
    """Set torch's intra-op thread count for `cfg` (once, at the start of a command or a
    training) and return `cfg` with the resolved count, as config.json records it."""
    threads = resolved_threads(cfg)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return cfg if cfg.threads == threads else TrainConfig(**{**asdict(cfg), "threads": threads})


def build_model(
    cfg: TrainConfig, data: dict[str, TaskData], device: torch.device
) -> MultiTaskModel:
    """Backbone then heads (target first), seeded: STL and joint runs start from the same θ_0."""
    torch.manual_seed(cfg.seed)
    first = next(iter(data.values()))
    x = first.x("train")
    input_shape = tuple(x.shape[1:])  # tensors and ImageFiles
    backbone = BACKBONES.get(cfg.backbone)(
        image_size=x.shape[-1],
        width=cfg.width,
        weights=cfg.weights,
        input_shape=input_shape,
        inputs=first.inputs,
    )
    specs = {name: task.spec for name, task in data.items()}
    model = MultiTaskModel(backbone, specs, input_shape).to(device)
    return configure(model, **resolved_speed(cfg), compile_mode=cfg.compile)


@dataclass
class TrainOutcome:
    state: TrainState
    data: dict[str, TaskData]
    metrics: list[dict]
    results: dict


def metric_rows(step: int, task: str, split: str, values: dict[str, float]) -> list[dict]:
    return [
        {"step": step, "task": task, "split": split, "metric": k, "value": v}
        for k, v in values.items()
    ]


def run_training(
    cfg: TrainConfig,
    *,
    on_step: Callable[[int], None] | None = None,
    checkpoint: Path | None = None,
) -> TrainOutcome:
    """Train `cfg` from scratch and evaluate every trained task on val and test.

    With `select="best-val"` the target's validation accuracy is measured every
    `eval_every` steps (and at the end) and the best iterate (the first of equals) is the
    trained model; results.json names its step and keeps the last iterate's accuracies.
    """
    validate(cfg)
    cfg = apply_threads(cfg)
    device = resolve_device(cfg.device)
    terms = active_terms(cfg.terms())
    tasks = trained_tasks(cfg)
    bench = benchmark_of(cfg)
    data = bench.load(tasks, device)
    state = TrainState.create(build_model(cfg, data, device), cfg.optim(), cfg.steps)
    attach_sources(state, terms, data, cfg.batch_size, cfg.seed)
    rule = build_rule(cfg, state, terms, data)
    rows: list[dict] = []

    def log(step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            task, _, metric = name.partition(":")
            rows.append(
                {"step": step, "task": task, "split": "train", "metric": metric or "loss",
                 "value": value}
            )  # fmt: skip

    target_spec = data[cfg.target].spec
    best_val, best_step, best_weights = None, None, None
    keep_best = cfg.select == "best-val"
    while state.step < cfg.steps:
        chunk = min(cfg.eval_every, cfg.steps - state.step)
        train(
            state, terms, chunk, rule, log_every=min(50, cfg.eval_every), on_log=log,
            on_step=on_step, bn_batches=cfg.bn_batches, loss_reduction=cfg.loss_reduction,
        )  # fmt: skip
        if state.step < cfg.steps or keep_best:
            val_score = score(state.model, data[cfg.target], "val")
            if state.step < cfg.steps:
                rows += metric_rows(state.step, cfg.target, "val", {target_spec.primary: val_score})
            if keep_best and (best_val is None or better(val_score, best_val, target_spec)):
                best_val, best_step = val_score, state.step
                if state.step < cfg.steps:  # the last iterate needs no copy
                    best_weights = {
                        k: v.detach().clone() for k, v in state.model.state_dict().items()
                    }
        if checkpoint is not None:
            state.save(checkpoint)
    selection = {}
    if keep_best:
        target = data[cfg.target]
        last = {s: score(state.model, target, s) for s in ("val", "test")}
        selection = {
            "select": "best-val",
            "selected_step": best_step,
            "last": {"step": state.step, "val_score": last["val"], "test_score": last["test"]},
        }
        if best_step != state.step:
            state.model.load_state_dict(best_weights)
    per_task, kept, target_values = {}, {}, {}
    for name in tasks:
        spec = data[name].spec
        per_task[name] = {"metric": spec.primary, "higher_is_better": spec.higher_is_better}
        for split in ("val", "test"):
            values, pairing = evaluate_paired(state.model, data[name], split)
            rows += metric_rows(state.step, name, split, values)
            per_task[name][f"{split}_score"] = values[spec.primary]
            per_task[name][split] = values
            if "csd" in values:
                per_task[name][f"{split}_csd"] = values["csd"]
            if name == cfg.target:
                target_values[split] = values
                if split == "test":
                    kept = pairing_fields(pairing)
    results = {
        "target": cfg.target,
        "method": cfg.method,
        "aux": cfg.aux if get_method(cfg.method).uses_aux else [],
        "steps": state.step,
        **score_fields(target_spec, target_values),
        **kept,  # which test images the target got right (or its test folds): TG's noise
        "tasks": per_task,
        **selection,
        **data_notes(bench),
    }
    return TrainOutcome(state, data, rows, results)


def better(a: float, b: float, spec) -> bool:
    """Whether primary score `a` is strictly better than `b` in the task's direction."""
    return a > b if spec.higher_is_better else a < b


def data_notes(bench) -> dict:
    """What the results should say about the data: images skipped as unreadable."""
    return bench.skipped() if hasattr(bench, "skipped") else {}


def build_rule(
    cfg: TrainConfig, state: TrainState, terms: list[LossTerm], data: dict[str, TaskData]
) -> Rule | None:
    """The method's rule for this training (None for the static methods)."""
    method = get_method(cfg.method)
    if method.rule is None:
        return None
    model = state.model
    target = data[cfg.target]
    head = model.head_index(cfg.target)
    val = BatchSource(
        [TaskData(target.name, target.num_classes, {"train": target.splits["val"]}, target.spec)],
        [head],
        cfg.batch_size,
        seeded_generator(cfg.seed, f"val:{cfg.target}"),
        augment=False,
    )
    ctx = RuleContext(
        model=model,
        term_names=[t.name for t in terms],
        term_heads=[[model.head_index(task) for task in t.tasks] for t in terms],
        steps=cfg.steps,
        lr=cfg.lr,
        seed=cfg.seed,
        val_batches=val.next,
        current_lr=lambda: state.optimizer.param_groups[-1]["lr"],  # the heads' (full) rate
    )
    return method.rule(ctx)


# --- trainings shared through the run cache (above all the STL baselines) --------------
# The cache itself — keys, entries, claims, cached_run, stl_baseline, trained_model — lives
# in ntlab.core.cache; its names stay importable from here (looked up on first use, since
# ntlab.core.cache builds on this module).

CACHE_NAMES = frozenset(
    {
        "METRICS_FILE", "METRIC_COLUMNS", "NOT_IN_KEY", "STL_METRICS_FILE", "cache_key",
        "cached_results", "cached_run", "digest", "metrics_csv", "run_cache_dir",
        "stl_baseline", "stl_curve_csv", "store_cached", "store_run", "trained_model",
        "validation_curve",
    }
)  # fmt: skip


def __getattr__(name: str):
    if name in CACHE_NAMES:
        from ntlab.core import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stl_config(cfg: TrainConfig) -> TrainConfig:
    """The single-task run with the same budget, optimiser, model and seed as `cfg`
    (one term: its BatchNorm batches and loss reduction are the defaults' training), in the
    precision `cfg`'s method really trains in (fp32 for the methods that read gradients)."""
    from ntlab.core.speed import effective_precision

    single = {
        "bn_batches": "pooled",
        "loss_reduction": "sum",
        "precision": effective_precision(cfg.precision, cfg.method),
    }
    return TrainConfig(**{**asdict(cfg), "method": "stl", "aux": [], "lam": 1.0, **single})


def load_weights(model: MultiTaskModel, state: dict, tasks: list[str]) -> None:
    """Load a trained state (whose heads belong to `tasks`, in order) into `model`.

    The backbone must match; `model` may have more heads than the state (they keep their
    initialisation), which lets an STL model be measured against auxiliary tasks.
    """
    mapped = {}
    for key, value in state.items():
        if key.startswith("heads."):
            _, index, rest = key.split(".", 2)
            key = f"heads.{model.head_index(tasks[int(index)])}.{rest}"
        mapped[key] = value
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or any(not k.startswith("heads.") for k in missing):
        raise NtlabError(
            "the saved weights do not fit this model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); train it again"
        )


def trained_tasks(cfg: TrainConfig) -> list[str]:
    """The tasks a training of `cfg` loads, target first (its model's heads, in order)."""
    return list(dict.fromkeys(t for term in active_terms(cfg.terms()) for t in term.tasks))


def tg_fields(results: dict, stl: dict) -> dict:
    """One seed's TG on test of `results` over `stl` with its test-set SE and its effect:
    `tg`, `tg_se`, `tg_se_kind` (paired | binomial), `seeds` (1), `effect` (`ntlab.metrics`)."""
    noise = tg_noise(results, stl)
    return gain_fields([noise["tg"]], noise["tg_se"], noise["tg_se_kind"])


STL_KEPT = ("metric", "higher_is_better", "test_n", "test_correct", "test_folds")


def with_transfer_gain(results: dict, stl: dict, source: str) -> dict:
    """Add the STL baseline and TG = P(method) − P(STL) on test (and on val), the test TG
    with its noise and verdict (`tg_fields`)."""
    fields = tg_fields(results, stl)
    return {
        **results,
        "stl": {
            "val_score": stl["val_score"],
            "test_score": stl["test_score"],
            "source": source,
            **{k: stl[k] for k in STL_KEPT if k in stl},
        },
        "transfer_gain": fields["tg"],
        "tg_se": fields["tg_se"],
        "tg_se_kind": fields["tg_se_kind"],
        "effect": fields["effect"],
        "transfer_gain_val": gain(results, stl, "val"),
    }


# --- a run directory's final model --------------------------------------------------------

MODEL_FILE = "model.pt"


def save_model(path: Path, model: MultiTaskModel, cfg: TrainConfig) -> None:
    """The final model of a run, with what is needed to rebuild it (atomic)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch_file({"state": state, "tasks": model.task_names, "train": asdict(cfg)}, path)


def load_model(
    run_dir: Path, tasks: list[str] | None = None, device: str | None = None
) -> tuple[MultiTaskModel, dict[str, TaskData], TrainConfig]:
    """(model, data, config) of a finished run directory that saved its model."""
    run_dir = Path(run_dir)
    status = run_dir / "status.json"
    if (
        not status.is_file()
        or read_json_object(status, "train it again").get("state") != "completed"
    ):
        raise NtlabError(f"{run_dir} is not a finished ntlab run (no completed status.json)")
    if not (run_dir / MODEL_FILE).is_file():
        raise NtlabError(
            f"{run_dir} has no {MODEL_FILE}; use a `ntlab train` or `ntlab forkmerge train` run"
        )
    fix = "train it again"
    saved = load_torch_file(run_dir / MODEL_FILE, fix)
    if not (isinstance(saved, dict) and {"state", "tasks", "train"} <= saved.keys()):
        raise DamagedFileError(run_dir / MODEL_FILE, "not an ntlab model file", fix)
    cfg = TrainConfig(**saved["train"])
    if device is not None:
        cfg = TrainConfig(**{**asdict(cfg), "device": device})
    target_device = resolve_device(cfg.device)
    names = list(dict.fromkeys(saved["tasks"] + list(tasks or [])))
    data = benchmark_of(cfg).load(names, target_device)
    model = build_model(cfg, data, target_device)
    load_weights(model, saved["state"], saved["tasks"])
    return model, data, cfg
