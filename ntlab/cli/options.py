"""Options shared by the commands, declared once.

Each group of options is the signature of a template function (`training_options`,
`run_options`); `@command(own_options, training_options, run_options)` gives a command all
of them, and the command receives them as one dict. Options whose default comes from
`--preset` default to None here; `resolve_options` fills them in (built-in default <
preset < --config file < command line).
"""

from __future__ import annotations

import copy
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import typer.models
from rich.markup import escape

from ntlab import catalog
from ntlab.cli.common import preset_help
from ntlab.errors import did_you_mean
from ntlab.presets import PRESETS

if TYPE_CHECKING:
    from ntlab.core.runner import TrainConfig

Target = Annotated[
    str | None,
    typer.Option(
        "--target",
        "-t",
        help="The target task (a domain of the benchmark) [required: here or as `target` in "
        "--config].",
    ),
]
Aux = Annotated[
    str, typer.Option(help="Auxiliary tasks, comma-separated, or `all` (every other domain).")
]
Benchmark = Annotated[str, typer.Option(help="The benchmark (`ntlab data list` shows them).")]
Steps = Annotated[int | None, typer.Option(help=f"Optimiser steps. {preset_help('steps')}")]
BatchSize = Annotated[
    int | None, typer.Option(help=f"Mini-batch size per loss term. {preset_help('batch_size')}")
]
LR = Annotated[float | None, typer.Option(help=f"Learning rate. {preset_help('lr')}")]
Optimizer = Annotated[
    str | None,
    typer.Option(help=f"Optimiser (sgd: nesterov momentum 0.9). {preset_help('optimizer')}"),
]
WeightDecay = Annotated[
    float | None,
    typer.Option(help=f"Weight decay (L2) of the optimiser. {preset_help('weight_decay')}"),
]
Schedule = Annotated[
    str | None,
    typer.Option(help=f"Learning-rate schedule. {preset_help('schedule')}"),
]
Backbone = Annotated[
    str | None,
    typer.Option(
        help="Backbone (cnn: small, fast on CPU; fcn: its fully-convolutional form for dense "
        "tasks; resnet50-dilated: the paper's NYUv2 backbone; esmm, mmoe: tabular "
        "recommendation models for markets and aliexpress, and only for them; the others: "
        "torchvision's; all trained from scratch unless --weights) [default: the benchmark's: "
        "fcn for scenes and nyuv2, esmm for markets and aliexpress, cnn otherwise]."
    ),
]
BackboneLrScale = Annotated[
    float | None,
    typer.Option(
        help=f"The backbone's learning rate is --lr × this. {preset_help('backbone_lr_scale')}"
    ),
]
Root = Annotated[
    Path | None,
    typer.Option(
        help="Data root of a benchmark on disk: image lists (domainnet: else $NTLAB_DOMAINNET; "
        "imagelist: else $NTLAB_IMAGELIST) with image_list/<domain>_<split>.txt; nyuv2 (else "
        "$NTLAB_NYUV2); aliexpress (else $NTLAB_ALIEXPRESS) with AliExpress_<CC>/{train,test}.csv."
    ),
]
Domains = Annotated[
    str,
    typer.Option(
        help="imagelist: its domains, comma-separated, or `all` (every "
        "image_list/<domain>_train.txt)."
    ),
]
ImageSize = Annotated[
    int | None,
    typer.Option(
        help="Image lists: crop size in pixels (images are resized to size×256/224 first) "
        "[default: 224]."
    ),
]
Workers = Annotated[
    int | None,
    typer.Option(help="Image lists: loader processes decoding JPEGs [default: cores − 1, ≤ 8]."),
]
Decode = Annotated[
    str,
    typer.Option(
        help="Image lists: where the JPEGs are decoded: cpu (by the loader processes) or gpu "
        "(the processes only read the files; the training GPU decodes them with nvJPEG and "
        "crops there). Needs --device cuda."
    ),
]
Base = Annotated[
    str | None,
    typer.Option(
        help="ssl: the image set, fashion (Fashion-MNIST, Debian's dataset-fashion-mnist) or "
        "mnist [default: fashion]."
    ),
]
Labels = Annotated[
    int | None,
    typer.Option(
        help="ssl: training images that keep their labels (class balanced) [default: 100]."
    ),
]
SkipBadImages = Annotated[
    bool,
    typer.Option(
        help="Image lists: leave out unreadable images (warned once, counted in results.json) "
        "instead of failing the run."
    ),
]
Width = Annotated[
    int,
    typer.Option(
        help="Channels of the cnn backbone's first layer; esmm, mmoe: the embedding dimension "
        "of each field (MTReclib's is 128)."
    ),
]
Weights = Annotated[
    Path | None, typer.Option(help="A local state-dict file for the backbone (no download).")
]
Seed = Annotated[int, typer.Option(help="Seed of initialisation and batch order.")]
Device = Annotated[str, typer.Option(help="auto (cuda if available), cpu, or cuda[:N].")]
EvalEvery = Annotated[
    int | None,
    typer.Option(
        help="Steps between target validation checks "
        f"{preset_help('eval_every')[:-1]}, at most --steps]."
    ),
]
# The authors' choices (their DomainNet equal_weight.py), each an option; README: "BatchNorm,
# threads and the authors' choices".
Threads = Annotated[
    int | None,
    typer.Option(
        help="CPU intra-op threads of torch; results depend on it, so it is recorded in "
        "config.json and is part of the cache key [default: torch's default on this machine]."
    ),
]
BnBatches = Annotated[
    str,
    typer.Option(
        help="How a BatchNorm backbone sees the loss terms' batches: pooled (one backbone pass "
        "over all terms' batches) or per-term (one pass per term, each batch normalised on "
        "its own: the authors' code). Same numbers for the cnn (GroupNorm)."
    ),
]
Select = Annotated[
    str,
    typer.Option(
        help="Which iterate is the trained model: last, or best-val (the best target "
        "validation score — its primary metric — of the checks every --eval-every steps: the "
        "authors' code)."
    ),
]
LossReduction = Annotated[
    str,
    typer.Option(
        help="How the terms' losses combine: sum (Σ ν_k L_k) or mean ((Σ ν_k L_k)/K over the "
        "K terms: the authors' EW)."
    ),
]
Precision = Annotated[
    str,
    typer.Option(
        help="Arithmetic of the forward passes (torch.autocast): fp32, bf16, or fp16 (with a "
        "gradient scaler; static weightings only). Parameters, optimiser and merges stay "
        "fp32, and so do the methods that read gradients (the Jacobian aggregators, "
        "GradNorm, the auxiliary-task methods). Recorded in config.json and the cache key."
    ),
]
MemoryFormat = Annotated[
    str,
    typer.Option(
        help="Layout of the backbone's images and weights: auto (channels-last for the ResNets "
        "on CUDA, contiguous otherwise), contiguous or channels-last."
    ),
]
Compile = Annotated[
    str,
    typer.Option(
        help="torch.compile the backbone's training forward: off, default, or reduce-overhead "
        "(CUDA graphs on a GPU); or captured: the whole step (forward, backward, Adam's "
        "update) recorded as one CUDA graph and replayed (CUDA, Adam, the static weightings, "
        "in-memory data). The first steps compile or record; ForkMerge's branches, rounds "
        "and merges reuse the graph. Numbers agree with off within float tolerance, not bit "
        "for bit, so it is part of the cache key."
    ),
]
Preset = Annotated[
    str | None, typer.Option(help="Option bundle (budget and optimiser) [default: default].")
]
Config = Annotated[
    Path | None,
    typer.Option(
        help="A TOML file of options (keys as option names: `steps = 60`); top-level keys serve "
        "every command, a table per command overrides them (`[train]`, `[forkmerge.train]`); "
        "the command line wins."
    ),
]
Overwrite = Annotated[
    bool, typer.Option(help="Replace a finished run in --out (the folder is emptied first).")
]
Resume = Annotated[
    bool,
    typer.Option(
        help="Continue the killed or failed run in --out, started with the same options: "
        "finished parts are kept, not redone."
    ),
]
Out = Annotated[
    Path | None,
    typer.Option(help="Run directory [default: a new folder runs/COMMAND-…-TIME]."),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar or table; print the run directory.")
]


Lams = Annotated[str, typer.Option(help="λ grid, comma-separated (each ≥ 0).")]
Seeds = Annotated[
    str,
    typer.Option("--seeds", "--seed", help="Seeds, comma-separated; everything is run per seed."),
]
MergeEvery = Annotated[
    int | None,
    typer.Option(
        help="Δt of ForkMerge: steps between merges [default: a quarter of --steps (quick: 75, "
        "default: 125, paper: 12500)]."
    ),
]
MergeHeads = Annotated[
    str,
    typer.Option(
        help="ForkMerge: all = merge every head with the backbone; shared = merge the backbone "
        "and the target head, each branch keeps its own auxiliary heads."
    ),
]


Tasks = Annotated[
    str,
    typer.Option(
        "--tasks",
        "--domains",
        help="The tasks (the domains of digits and image lists), comma-separated, or `all` "
        "(every one of the benchmark).",
    ),
]


def task_list(text: str, bench: Any) -> list[str]:
    """The tasks of `--tasks` (`all`: every task of the benchmark), checked against it."""
    from ntlab.analysis.pairwise import check_domains

    tasks = bench.tasks()
    text = text.strip()
    canonical = getattr(bench, "canonical", str)
    wanted = (
        tasks if text == "all" else [canonical(d.strip()) for d in text.split(",") if d.strip()]
    )
    return check_domains(wanted, tasks)


MergeOpOption = Annotated[
    str,
    typer.Option(
        "--merge-op",
        help="How branches merge: average (Σ Λ_b θ_b, the paper's), ties (TIES-merging of the "
        "deltas from the fork: top --ties-k entries, elected signs, agreeing entries averaged) "
        "or dare (DARE: --dare-p of the delta entries dropped, the rest rescaled).",
    ),
]
TiesK = Annotated[
    float, typer.Option(help="ties: the share of each branch's delta entries kept, in (0, 1].")
]
DareP = Annotated[
    float,
    typer.Option(help="dare: the share of each branch's delta entries dropped, in [0, 1)."),
]


def merge_op_fields(opts: dict[str, Any]) -> dict[str, Any]:
    """ForkMergeOptions' merge-operator fields from resolved command options."""
    return {"merge_op": opts["merge_op"], "ties_k": opts["ties_k"], "dare_p": opts["dare_p"]}


def data_options(opts: dict[str, Any], bench_name: str) -> dict[str, Any]:
    """The benchmark's data options from resolved command options (those it accepts)."""
    from ntlab.data import BENCHMARKS
    from ntlab.data.benchmark import IMAGE_LIST_OPTIONS

    accepted = getattr(BENCHMARKS.get(bench_name), "options", IMAGE_LIST_OPTIONS)
    values = {
        "root": str(opts["root"]) if opts.get("root") is not None else None,
        "domains": _domain_list(opts.get("domains")),
        "image_size": opts.get("image_size"),
        "skip_bad_images": bool(opts.get("skip_bad_images")),
        "workers": opts.get("workers"),
        "decode": None if opts.get("decode") in (None, "cpu") else opts["decode"],
        "base": opts.get("base"),
        "labels": opts.get("labels"),
    }
    if "domains" not in accepted:  # e.g. domainnet: --domains only picks pairwise's domains
        values["domains"] = None
    return values


def _domain_list(text: str | None) -> list[str] | None:
    if text is None or text.strip() in ("", "all"):
        return None
    return [d.strip() for d in text.split(",") if d.strip()]


def benchmark(opts: dict[str, Any]):
    """The benchmark of resolved options; `target` and `aux` get their aliases expanded
    (DomainNet: `-t c --aux p,r`) in `opts`."""
    from ntlab.data import get_benchmark

    bench = get_benchmark(opts["benchmark"], **data_options(opts, opts["benchmark"]))
    canonical = getattr(bench, "canonical", None)
    if canonical is not None:
        if opts.get("target"):
            opts["target"] = canonical(opts["target"])
        if opts.get("aux") and opts["aux"] != "all":
            opts["aux"] = ",".join(canonical(a.strip()) for a in opts["aux"].split(","))
    return bench


def train_config(opts: dict[str, Any], tasks: list[str], **overrides: Any) -> TrainConfig:
    """The TrainConfig of resolved options (aux checked against the benchmark's tasks)."""
    from ntlab.core.runner import TrainConfig, apply_threads, resolve_aux
    from ntlab.data.benchmark import DATA_OPTIONS

    names = {f.name for f in fields(TrainConfig)} - {"aux"} - set(DATA_OPTIONS)
    values = {k: v for k, v in opts.items() if k in names}
    values.update(data_options(opts, opts["benchmark"]))
    values.update(overrides)
    jobs = opts.get("jobs")
    jobs = jobs if isinstance(jobs, int) and jobs >= 1 else 1
    if values.get("threads") is None and (jobs > 1 or opts.get("executor") == "ray"):
        from ntlab.core.executor import default_threads  # each training its share of the cores

        values["threads"] = default_threads(jobs)
    if values.get("weights") is not None:
        values["weights"] = str(values["weights"])
    if values.get("backbone") is None:
        from ntlab.data import BENCHMARKS

        values["backbone"] = getattr(BENCHMARKS.get(opts["benchmark"]), "default_backbone", "cnn")
    cfg = TrainConfig(**values, aux=resolve_aux(tasks, opts["target"], opts["aux"]))
    return apply_threads(cfg) if cfg.threads is None or cfg.threads > 0 else cfg


def training_options(
    benchmark: Benchmark = "digits",
    steps: Steps = None,
    batch_size: BatchSize = None,
    lr: LR = None,
    optimizer: Optimizer = None,
    weight_decay: WeightDecay = None,
    schedule: Schedule = None,
    backbone: Backbone = None,
    width: Width = 16,
    weights: Weights = None,
    backbone_lr_scale: BackboneLrScale = None,
    seed: Seed = 0,
    device: Device = "auto",
    eval_every: EvalEvery = None,
    root: Root = None,
    domains: Domains = "all",
    image_size: ImageSize = None,
    workers: Workers = None,
    decode: Decode = "cpu",
    skip_bad_images: SkipBadImages = False,
    base: Base = None,
    labels: Labels = None,
    threads: Threads = None,
    bn_batches: BnBatches = "pooled",
    select: Select = "last",
    loss_reduction: LossReduction = "sum",
    precision: Precision = "fp32",
    memory_format: MemoryFormat = "auto",
    compile: Compile = "off",
) -> None:
    """What decides a training (the fields of TrainConfig, less target/method/aux/λ)."""


Jobs = Annotated[
    int,
    typer.Option(
        help="Trainings at once on this machine, each in a worker process of its own; with "
        "more than 1, --threads defaults to cores // jobs. Numbers do not depend on it at "
        "the same --threads."
    ),
]
Executor = Annotated[
    str,
    typer.Option(
        help="local: worker processes on this machine (--jobs); ray: one Ray task per "
        "training, on a local Ray or the cluster at --ray-address (pip install 'ntlab[ray]')."
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        help="The Ray cluster for --executor ray: `auto` (the one `ray start` runs here) or "
        "HOST:PORT [default: start a local Ray with this machine's cores]."
    ),
]
GpusPerJob = Annotated[
    float,
    typer.Option(
        help="Where GPUs are used: the share of a GPU each training gets (0.5 packs two "
        "trainings per GPU); worker processes take the GPUs in turn."
    ),
]


def parallel_options(
    jobs: Jobs = 1,
    executor: Executor = "local",
    ray_address: RayAddress = None,
    gpus_per_job: GpusPerJob = 1.0,
) -> None:
    """How a command of many trainings runs them: worker processes or Ray tasks."""


def parallel_settings(opts: dict[str, Any]):
    """The executor settings of resolved options (checked)."""
    from ntlab.core.executor import Settings, check_settings

    def given(name: str, default: Any) -> Any:
        value = opts.get(name)
        return default if value is None else value

    return check_settings(
        Settings(
            executor=given("executor", "local"),
            jobs=given("jobs", 1),
            gpus_per_job=given("gpus_per_job", 1.0),
            ray_address=opts.get("ray_address"),
        )
    )


FigureFormat = Annotated[
    str,
    typer.Option(
        "--format", help="Figure files in the run directory and in report.html: png or svg."
    ),
]


def run_options(
    preset: Preset = None,
    config: Config = None,
    out: Out = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    format: FigureFormat = "png",
) -> None:
    """Where a command writes and how it talks."""


# Help panels, by option name (a command's own options stay in its first panel, "Options",
# unless listed here); the image-list options have their own panel, so a digits user can
# skip it.
DATA, IMAGES, MODEL, OPTIM, SPEED, FORKMERGE, PARALLEL, OUTPUT = (
    "Data",
    "Image lists (benchmarks imagelist, domainnet)",
    "Model",
    "Optimisation",
    "Speed (mostly for GPUs)",
    "ForkMerge",
    "Parallel trainings",
    "Seeds and output",
)
PANELS = {
    "benchmark": DATA,
    **dict.fromkeys(("base", "labels"), DATA),
    **dict.fromkeys(("root", "image_size", "workers", "decode", "skip_bad_images"), IMAGES),
    **dict.fromkeys(("backbone", "width", "weights", "bn_batches"), MODEL),
    **dict.fromkeys(
        (
            "steps",
            "batch_size",
            "lr",
            "optimizer",
            "weight_decay",
            "schedule",
            "backbone_lr_scale",
            "eval_every",
            "select",
            "loss_reduction",
            "threads",
            "device",
        ),
        OPTIM,
    ),  # fmt: skip
    **dict.fromkeys(("precision", "memory_format", "compile", "branch_exec"), SPEED),
    **dict.fromkeys(
        (
            "merge_every",
            "merge_heads",
            "with_forkmerge",
            "forkmerge_branches",
            "merge_op",
            "ties_k",
            "dare_p",
        ),
        FORKMERGE,
    ),  # fmt: skip
    **dict.fromkeys(("jobs", "executor", "ray_address", "gpus_per_job"), PARALLEL),
    **dict.fromkeys(
        ("seed", "seeds", "preset", "config", "out", "overwrite", "resume", "quiet", "format"),
        OUTPUT,
    ),
}
TEMPLATE_PANELS = {"domains": IMAGES}  # only where the template declares it (not pairwise's)
# Options with fixed choices, by name: the parser checks them and --help lists them.
CHOICES: dict[str, tuple[str, ...]] = {
    "benchmark": catalog.BENCHMARK_NAMES,
    "backbone": catalog.BACKBONE_NAMES,
    "optimizer": catalog.OPTIMIZERS,
    "schedule": catalog.SCHEDULES,
    "bn_batches": catalog.BN_BATCHES,
    "select": catalog.SELECTIONS,
    "loss_reduction": catalog.LOSS_REDUCTIONS,
    "merge_heads": catalog.MERGE_HEADS,
    "merge_op": catalog.MERGE_OPS,
    "forkmerge_branches": catalog.BRANCH_MODES,
    "branches": catalog.BRANCH_MODES,
    "search": ("auto", *catalog.SEARCHES),
    "optimizer_state": catalog.OPTIMIZER_STATES,
    "aux_kind": catalog.AUX_KINDS,
    "preset": tuple(PRESETS),
    "format": catalog.FORMATS,
    "executor": catalog.EXECUTORS,
    "precision": catalog.PRECISIONS,
    "memory_format": catalog.MEMORY_FORMATS,
    "compile": catalog.COMPILE_MODES,
    "branch_exec": catalog.BRANCH_EXEC,
    "decode": catalog.DECODERS,
}


def choice(choices: tuple[str, ...], metavar: str | None = None) -> dict[str, Any]:
    """typer.Option arguments for an option with fixed choices: the parser rejects anything
    else (with a did-you-mean) and --help shows `[a|b|c]` (or `metavar`)."""

    def parse(value: str) -> str:
        if value not in choices:
            hint = did_you_mean(value, choices).strip()
            message = f"{value!r} is not one of {', '.join(choices)}"
            raise typer.BadParameter(f"{message}; {hint}" if hint else message)
        return value

    parse.__name__ = metavar or "choice"
    return {"parser": parse, "metavar": metavar or f"[{'|'.join(choices)}]"}


def _dressed(p: inspect.Parameter, own: bool) -> inspect.Parameter:
    """`p` with its help panel, its choices and its help text escaped for rich markup (so
    `[default: …]` and `image_list/<domain>_<split>.txt` show as written)."""
    base, *meta = typing.get_args(p.annotation) or (p.annotation,)
    infos = [m for m in meta if isinstance(m, typer.models.OptionInfo)]
    if not infos:
        return p
    info = copy.copy(infos[0])
    if info.help:
        info.help = escape(info.help)
    if info.rich_help_panel is None:
        info.rich_help_panel = PANELS.get(p.name) or (None if own else TEMPLATE_PANELS.get(p.name))
    if p.name in CHOICES and info.parser is None and info.metavar is None:
        for key, value in choice(CHOICES[p.name]).items():
            setattr(info, key, value)
    return p.replace(annotation=Annotated[base, info])


PANEL_ORDER = (None, DATA, MODEL, OPTIM, SPEED, FORKMERGE, PARALLEL, IMAGES, OUTPUT)


def _panel_rank(p: inspect.Parameter) -> int:
    infos = [m for m in typing.get_args(p.annotation)[1:] if isinstance(m, typer.models.OptionInfo)]
    panel = infos[0].rich_help_panel if infos else None
    return PANEL_ORDER.index(panel) if panel in PANEL_ORDER else 0


def command(*templates: Callable[..., None], exclude: tuple[str, ...] = ()):
    """Give a command the options of `templates` (less `exclude`, which the command declares
    its own way; an option in two templates is the first one's); it is called as
    `fn(ctx, values)`. Options get their help panel (`PANELS`) and choices (`CHOICES`)."""
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    ]
    for i, template in enumerate(templates):
        for p in inspect.signature(template, eval_str=True).parameters.values():
            if p.name not in exclude and p.name not in {q.name for q in params}:
                params.append(_dressed(p.replace(kind=inspect.Parameter.KEYWORD_ONLY), i == 0))
    params[1:] = sorted(params[1:], key=_panel_rank)  # --help shows the panels in this order

    def decorate(fn: Callable[[typer.Context, dict[str, Any]], None]):
        @functools.wraps(fn)
        def wrapper(ctx: typer.Context, **values: Any) -> None:
            return fn(ctx, values)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__doc__ = escape(inspect.cleandoc(fn.__doc__ or ""))
        return wrapper

    return decorate
