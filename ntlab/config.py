"""Configuration, apart from the code that runs it: the options of a training, of
ForkMerge and of `gcs` as dataclasses, their validation (`validate`, `resolve_aux`,
`resolve_device`), and the presets (`ntlab.presets`, re-exported here).

The module imports nothing heavy at import time: the command line declares its defaults
from these fields (one source of defaults for the library and the CLI) without importing
torch; the checks that need a registry import it when they run.

`ntlab.core.runner.TrainConfig`, `ntlab.core.forkmerge.ForkMergeOptions` and
`ntlab.analysis.gcs.GcsOptions` are these classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ntlab.catalog import (
    AUX_KINDS,
    BN_BATCHES,
    COMPILE_MODES,
    DECODERS,
    FP16_METHODS,
    LOSS_REDUCTIONS,
    MEMORY_FORMATS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SELECTIONS,
)
from ntlab.checks import (
    MAX_IMAGE_SIZE,
    MAX_WIDTH,
    MAX_WORKERS,
    check_number,
    check_seed,
    check_steps,
)
from ntlab.errors import NtlabError, unknown_name
from ntlab.presets import DEFAULT_PRESET, PRESETS, preset_value  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import torch

    from ntlab.core.state import OptimConfig
    from ntlab.core.train import LossTerm

# λ grids: of `sweep` (and `csd`, `compare`'s grid search), of `gcs`, of `tsne`
SWEEP_LAMS = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0)
GCS_LAMS = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0)
TSNE_LAMS = (0.0, 0.0625, 0.25, 1.0)


def lams_text(lams: tuple[float, ...]) -> str:
    """A λ grid as --lams takes it: `0,0.0625,0.25,1`."""
    return ",".join(f"{lam:g}" for lam in lams)


@dataclass
class TrainConfig:
    """Every option that decides what a training computes."""

    target: str
    method: str = "stl"
    aux: list[str] = field(default_factory=list)
    lam: float = 1.0
    benchmark: str = "digits"
    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    backbone: str = "cnn"
    width: int = 16
    weights: str | None = None
    backbone_lr_scale: float = 1.0
    seed: int = 0
    device: str = "auto"
    eval_every: int = 100
    # Image-list benchmarks (domainnet, imagelist): where the data is and how it is loaded.
    root: str | None = None
    domains: list[str] | None = None
    image_size: int | None = None
    skip_bad_images: bool = False
    workers: int | None = None
    decode: str | None = None  # cpu (None: the loader workers decode) | gpu (nvJPEG)
    # ssl: the image set (fashion | mnist) and how many training images keep their labels
    base: str | None = None
    labels: int | None = None
    # The authors' choices (their DomainNet equal_weight.py: one forward per domain, the
    # losses divided by the number of domains, the best-validation checkpoint kept).
    threads: int | None = None  # torch's intra-op threads on the CPU (None: torch's default)
    bn_batches: str = "pooled"  # pooled | per-term: how BatchNorm sees the terms' batches
    select: str = "last"  # last | best-val: which iterate is the trained model
    loss_reduction: str = "sum"  # sum: Σ ν_k L_k | mean: (Σ ν_k L_k)/K
    # Speed on an accelerator (ntlab.core.speed): fp32 | bf16 | fp16 autocast; the layout of
    # image tensors; torch.compile's mode for the training forward
    precision: str = "fp32"
    memory_format: str = "auto"
    compile: str = "off"

    def __post_init__(self) -> None:
        if self.decode == "cpu":  # the loader processes decode: the default, one cache key
            self.decode = None

    def optim(self) -> OptimConfig:
        from ntlab.core.state import OptimConfig

        return OptimConfig(
            self.optimizer,
            self.lr,
            self.weight_decay,
            schedule=self.schedule,
            backbone_lr_scale=self.backbone_lr_scale,
        )

    def data_options(self) -> dict:
        return {
            "root": self.root,
            "domains": self.domains,
            "image_size": self.image_size,
            "skip_bad_images": self.skip_bad_images,
            "workers": self.workers,
            "decode": self.decode,
            "base": self.base,
            "labels": self.labels,
        }

    def terms(self) -> list[LossTerm]:
        from ntlab.methods import get_method

        return get_method(self.method).terms(self.target, self.aux, self.lam)


@dataclass
class ForkMergeOptions:
    merge_every: int
    search: str = "auto"  # grid for two branches, greedy above
    grid_step: float = 0.1
    val_samples: int | None = None
    merge_margin: float = 0.0
    prune: int | None = None
    bn_recalibrate: bool = False
    bn_batches: int = 20
    optimizer_state: str = "keep"  # or "reset": fresh optimiser moments after every merge
    merge_heads: str = "all"  # or "shared": the backbone and the target head only
    merge_op: str = "average"  # or "ties", "dare" (ntlab.core.merge)
    ties_k: float = 0.2  # ties: the share of each branch's delta entries kept
    dare_p: float = 0.5  # dare: the share of each branch's delta entries dropped
    # sequential | concurrent: the branches of a round one after the other, or at once (a
    # thread and a CUDA stream each); the same numbers either way, so not in the cache key
    branch_exec: str = "sequential"

    def key_fields(self) -> dict:
        """The options as the cache keys them: an operator's parameter only with it, and
        nothing of how the branches are scheduled."""
        fields = asdict(self)
        fields.pop("branch_exec")
        if self.merge_op != "ties":
            fields.pop("ties_k")
        if self.merge_op != "dare":
            fields.pop("dare_p")
        return fields

    def search_for(self, branches: int) -> str:
        if self.search == "auto":
            return "grid" if branches <= 2 else "greedy"
        return self.search


@dataclass(frozen=True)
class GcsOptions:
    lams: tuple[float, ...] = GCS_LAMS
    batches: int = 64
    eta: float = 0.01  # the paper's η; the CLI takes its defaults from these fields
    aux_kind: str = "task"
    batch_size: int = 64
    probe_steps: int = 100
    seed: int = 0

    def check(self) -> None:
        from ntlab.analysis.common import check_lams

        if self.aux_kind not in AUX_KINDS:
            raise unknown_name("--aux-kind", self.aux_kind, AUX_KINDS)
        check_steps("--batches", self.batches)
        check_number("--eta", self.eta, low=0, low_open=True, why="the step size of θ − η·g")
        check_steps("--probe-steps", self.probe_steps, low=0)
        check_number("--batch-size", self.batch_size, low=1, integer=True)
        check_seed("--seed", self.seed)
        check_lams(self.lams)
        if 0.0 not in self.lams:
            raise NtlabError("--lams must contain 0: TG(λ) is measured against the λ = 0 step")


# --- validation -----------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """`auto` (cuda if available), `cpu` or `cuda[:N]` as a torch.device."""
    import torch

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
    from ntlab.methods import get_method
    from ntlab.models import BACKBONES

    get_method(cfg.method)
    BACKBONES.get(cfg.backbone)
    check_backbone_kind(cfg.benchmark, cfg.backbone)
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
    if cfg.decode is not None:
        if cfg.decode not in DECODERS:
            raise unknown_name("--decode", cfg.decode, DECODERS)
        if cfg.decode == "gpu" and resolve_device(cfg.device).type != "cuda":
            raise NtlabError(
                "--decode gpu decodes the JPEGs on the training GPU, and this training runs on "
                "the CPU; use --decode cpu (or --device cuda)"
            )
    if cfg.threads is not None and cfg.threads <= 0:
        raise NtlabError(f"--threads must be a positive number of threads, got {cfg.threads}")
    for option, value, choices in (
        ("--bn-batches", cfg.bn_batches, BN_BATCHES),
        ("--select", cfg.select, SELECTIONS),
        ("--loss-reduction", cfg.loss_reduction, LOSS_REDUCTIONS),
        ("--precision", cfg.precision, PRECISIONS),
        ("--memory-format", cfg.memory_format, MEMORY_FORMATS),
        ("--compile", cfg.compile, COMPILE_MODES),
    ):
        if value not in choices:
            raise unknown_name(option, value, choices)
    if cfg.compile == "captured":
        check_capturable(cfg)
    if cfg.precision == "fp16" and cfg.method not in FP16_METHODS:
        raise NtlabError(
            f"--precision fp16 needs loss scaling, which ntlab applies to the static weightings "
            f"({', '.join(FP16_METHODS)}), not to {cfg.method}; use --precision bf16"
        )


# Why `--compile captured` refuses a training: said alike whether the config tells it (here,
# before any data loads) or the training's objects do (`ntlab.core.captured.refusal`).
CAPTURE_REFUSALS = {
    "cpu": "it records CUDA graphs, and this training runs on the CPU; use --compile default",
    "fp16": "fp16's loss scaler checks for infinities on the host; use --precision bf16",
    "optimizer": "only Adam's update is captured; use --optimizer adam",
    "files": "image files are decoded per batch; use --compile default",
}


def check_capturable(cfg: TrainConfig) -> None:
    """What `--compile captured` needs that the config tells (`ntlab.core.captured`)."""
    why = None
    if resolve_device(cfg.device).type != "cuda":
        why = CAPTURE_REFUSALS["cpu"]
    elif cfg.method not in FP16_METHODS:
        why = f"{cfg.method} is not a static weighting (stl, ew, fixed, forkmerge)"
    elif cfg.precision == "fp16":
        why = CAPTURE_REFUSALS["fp16"]
    elif cfg.optimizer != "adam":
        why = CAPTURE_REFUSALS["optimizer"]
    elif cfg.benchmark in ("imagelist", "domainnet"):
        why = CAPTURE_REFUSALS["files"]
    if why:
        raise NtlabError(f"--compile captured cannot run this training: {why}")


def check_backbone_kind(benchmark: str, backbone: str) -> None:
    """The tabular benchmarks (markets, aliexpress) refuse ntlab's image backbones, and the
    other benchmarks its tabular ones (a backbone of the Python API's may take either)."""
    from ntlab.catalog import BACKBONE_NAMES, TABULAR_BACKBONES
    from ntlab.data import BENCHMARKS

    tabular = bool(getattr(BENCHMARKS.get(benchmark), "tabular", False))
    if tabular and backbone in BACKBONE_NAMES and backbone not in TABULAR_BACKBONES:
        raise NtlabError(
            f"{benchmark} needs a tabular backbone: {' or '.join(TABULAR_BACKBONES)} "
            f"(--backbone {backbone} is for images)"
        )
    if not tabular and backbone in TABULAR_BACKBONES:
        raise NtlabError(
            f"--backbone {backbone} is for the tabular recommendation benchmarks (markets, "
            f"aliexpress); {benchmark} has images: e.g. --backbone cnn"
        )


def check_cnn_width(width: int) -> None:
    """The cnn backbone normalises `width` and 2·width channels with GroupNorm(min(8, c)),
    which needs c to be a multiple of its groups: widths 1–4, or multiples of 8."""
    check_number("--width", width, low=1, high=MAX_WIDTH, integer=True)
    if width > 4 and width % 8:
        raise NtlabError(
            f"--width of the cnn backbone must be 1, 2, 3, 4 or a multiple of 8, got {width} "
            "(its GroupNorm layers split width and 2×width channels into 8 groups)"
        )
