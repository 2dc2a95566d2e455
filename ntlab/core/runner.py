"""From a resolved config to a trained, evaluated run — the path every command shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ntlab.catalog import SELECTIONS  # noqa: F401  (re-exported)
from ntlab.checks import (
    MAX_IMAGE_SIZE,
    MAX_WIDTH,
    MAX_WORKERS,
    check_number,
    check_seed,
    check_steps,
)
from ntlab.config import TrainConfig  # noqa: F401  (re-exported)
from ntlab.core.evaluate import evaluate, evaluate_with_correct
from ntlab.core.rules import Rule, RuleContext
from ntlab.core.state import OPTIMIZERS, SCHEDULES, TrainState
from ntlab.core.train import (
    BN_BATCHES,
    LOSS_REDUCTIONS,
    LossTerm,
    active_terms,
    attach_sources,
    train,
)
from ntlab.data import TaskData, get_benchmark
from ntlab.data.sampler import BatchSource, seeded_generator
from ntlab.errors import NtlabError, unknown_name
from ntlab.methods import get_method
from ntlab.metrics import gain_fields, pack_correct, tg_noise, transfer_gain
from ntlab.models import BACKBONES, MultiTaskModel
from ntlab.storage import DamagedFileError, load_torch_file, read_json_object, save_torch_file


def benchmark_of(cfg: TrainConfig):
    """The benchmark of `cfg`, with its data options."""
    return get_benchmark(cfg.benchmark, **cfg.data_options())


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NtlabError(
            "--device cuda was asked for but no CUDA GPU is available; use --device cpu"
        )
    if name != "cpu" and not name.startswith("cuda"):
        raise NtlabError(f"unknown device {name!r}; use auto, cpu or cuda[:N]")
    return torch.device(name)


def resolve_aux(benchmark_tasks: list[str], target: str, aux: str | list[str] | None) -> list[str]:
    """`all`/None → every other task; a comma list is checked against the benchmark."""
    if target not in benchmark_tasks:
        raise unknown_name("target", target, benchmark_tasks)
    if aux is None or aux == "all" or aux == ["all"]:
        return [t for t in benchmark_tasks if t != target]
    names = [a.strip() for a in aux.split(",")] if isinstance(aux, str) else list(aux)
    names = [a for a in names if a]
    if not names:
        raise NtlabError("--aux is empty; give task names separated by commas, or `all`")
    for name in names:
        if name not in benchmark_tasks:
            raise unknown_name("auxiliary task", name, benchmark_tasks)
    if target in names:
        raise NtlabError(f"--target {target} is also listed in --aux; remove it from --aux")
    if len(set(names)) != len(names):
        raise NtlabError("--aux lists a task twice")
    return names


def validate(cfg: TrainConfig) -> None:
    """Reject impossible numbers and unknown names before any work is done."""
    get_method(cfg.method)
    BACKBONES.get(cfg.backbone)
    check_steps("--steps", cfg.steps)
    check_number("--batch-size", cfg.batch_size, low=1, integer=True)
    check_number("--lr", cfg.lr, low=0, low_open=True)
    check_number("--lam", cfg.lam, low=0, why="λ weighs the auxiliary loss")
    check_number("--weight-decay", cfg.weight_decay, low=0)
    check_number("--eval-every", cfg.eval_every, low=1, integer=True)
    check_number("--backbone-lr-scale", cfg.backbone_lr_scale, low=0, low_open=True)
    check_seed("--seed", cfg.seed)
    if cfg.backbone == "cnn":
        check_cnn_width(cfg.width)
    if cfg.image_size is not None:
        check_number("--image-size", cfg.image_size, low=1, high=MAX_IMAGE_SIZE, integer=True)
    if cfg.workers is not None:
        check_number("--workers", cfg.workers, low=0, high=MAX_WORKERS, integer=True)
    if cfg.optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", cfg.optimizer, OPTIMIZERS)
    if cfg.schedule not in SCHEDULES:
        raise unknown_name("schedule", cfg.schedule, SCHEDULES)
    if get_method(cfg.method).uses_aux and not cfg.aux:
        raise NtlabError(f"method {cfg.method} needs at least one auxiliary task (--aux)")
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        raise NtlabError(f"--weights file {cfg.weights} does not exist")
    resolve_device(cfg.device)
    if cfg.threads is not None and cfg.threads <= 0:
        raise NtlabError(f"--threads must be a positive number of threads, got {cfg.threads}")
    for option, value, choices in (
        ("--bn-batches", cfg.bn_batches, BN_BATCHES),
        ("--select", cfg.select, SELECTIONS),
        ("--loss-reduction", cfg.loss_reduction, LOSS_REDUCTIONS),
    ):
        if value not in choices:
            raise unknown_name(option, value, choices)


def check_cnn_width(width: int) -> None:
    """The cnn backbone normalises `width` and 2·width channels with GroupNorm(min(8, c)),
    which needs c to be a multiple of its groups: widths 1–4, or multiples of 8."""
    check_number("--width", width, low=1, high=MAX_WIDTH, integer=True)
    if width > 4 and width % 8:
        raise NtlabError(
            f"--width of the cnn backbone must be 1, 2, 3, 4 or a multiple of 8, got {width} "
            "(its GroupNorm layers split width and 2×width channels into 8 groups)"
        )


def build_model(
    cfg: TrainConfig, data: dict[str, TaskData], device: torch.device
) -> MultiTaskModel:
    """Backbone then heads (target first), seeded: STL and joint runs start from the same θ_0."""
    torch.manual_seed(cfg.seed)
    image_size = next(iter(data.values())).x("train").shape[-1]  # tensors and ImageFiles
    backbone = BACKBONES.get(cfg.backbone)(
        image_size=image_size, width=cfg.width, weights=cfg.weights
    )
    classes = {name: task.num_classes for name, task in data.items()}
    return MultiTaskModel(backbone, classes).to(device)


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

    best_val, best_step, best_weights = -1.0, None, None
    keep_best = cfg.select == "best-val"
    while state.step < cfg.steps:
        chunk = min(cfg.eval_every, cfg.steps - state.step)
        train(
            state, terms, chunk, rule, log_every=min(50, cfg.eval_every), on_log=log,
            on_step=on_step, bn_batches=cfg.bn_batches, loss_reduction=cfg.loss_reduction,
        )  # fmt: skip
        if state.step < cfg.steps or keep_best:
            val_acc = evaluate(state.model, data[cfg.target], "val")["acc"]
            if state.step < cfg.steps:
                rows += metric_rows(state.step, cfg.target, "val", {"acc": val_acc})
            if keep_best and val_acc > best_val:
                best_val, best_step = val_acc, state.step
                if state.step < cfg.steps:  # the last iterate needs no copy
                    best_weights = {
                        k: v.detach().clone() for k, v in state.model.state_dict().items()
                    }
        if checkpoint is not None:
            state.save(checkpoint)
    selection = {}
    if keep_best:
        target = data[cfg.target]
        last = {s: evaluate(state.model, target, s)["acc"] for s in ("val", "test")}
        selection = {
            "select": "best-val",
            "selected_step": best_step,
            "last": {"step": state.step, "val_acc": last["val"], "test_acc": last["test"]},
        }
        if best_step != state.step:
            state.model.load_state_dict(best_weights)
    per_task, kept = {}, {}
    for name in tasks:
        per_task[name] = {}
        for split in ("val", "test"):
            values, correct = evaluate_with_correct(state.model, data[name], split)
            rows += metric_rows(state.step, name, split, values)
            per_task[name][f"{split}_acc"] = values["acc"]
            per_task[name][f"{split}_csd"] = values["csd"]
            if name == cfg.target and split == "test":
                kept = {"test_n": int(correct.numel()), "test_correct": pack_correct(correct)}
    results = {
        "target": cfg.target,
        "method": cfg.method,
        "aux": cfg.aux if get_method(cfg.method).uses_aux else [],
        "steps": state.step,
        "val_acc": per_task[cfg.target]["val_acc"],
        "test_acc": per_task[cfg.target]["test_acc"],
        **kept,  # which test images the target got right: the pairing of TG's noise
        "tasks": per_task,
        **selection,
        **data_notes(bench),
    }
    return TrainOutcome(state, data, rows, results)


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
        [TaskData(target.name, target.num_classes, {"train": target.splits["val"]})],
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
    (one term: its BatchNorm batches and loss reduction are the defaults' training)."""
    single = {"bn_batches": "pooled", "loss_reduction": "sum"}
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


def with_transfer_gain(results: dict, stl: dict, source: str) -> dict:
    """Add the STL baseline and TG = P(method) − P(STL) on test (and on val), the test TG
    with its noise and verdict (`tg_fields`)."""
    fields = tg_fields(results, stl)
    return {
        **results,
        "stl": {
            "val_acc": stl["val_acc"],
            "test_acc": stl["test_acc"],
            "source": source,
            **{k: stl[k] for k in ("test_n", "test_correct") if k in stl},
        },
        "transfer_gain": fields["tg"],
        "tg_se": fields["tg_se"],
        "tg_se_kind": fields["tg_se_kind"],
        "effect": fields["effect"],
        "transfer_gain_val": transfer_gain(results["val_acc"], stl["val_acc"]),
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
