"""The names ntlab knows, without importing torch: what `--help`, the option parser and
`ntlab methods` need before any command runs.

Every list here is the one source of its names. The registries that build the things
(`ntlab.methods.METHODS`, `ntlab.models.BACKBONES`, `ntlab.data.BENCHMARKS`) are checked
against it by the tests, so a new method, backbone or benchmark is added here too.
"""

from __future__ import annotations

from dataclasses import dataclass

BENCHMARK_NAMES = (
    "digits", "imagelist", "domainnet", "scenes", "nyuv2", "ssl", "markets", "aliexpress",
)  # fmt: skip
BACKBONE_NAMES = (
    "cnn", "resnet18", "resnet50", "resnet101", "vit_b_16", "wrn-28-2", "fcn", "resnet50-dilated",
    "esmm", "mmoe",
)  # fmt: skip
# the backbones of the tabular recommendation benchmarks (markets, aliexpress), and theirs only
TABULAR_BACKBONES = ("esmm", "mmoe")
# The data options of a run: the image lists' (what a benchmark that declares no `options`
# takes), then ssl's own
IMAGE_LIST_OPTIONS = ("root", "domains", "image_size", "skip_bad_images", "workers", "decode")
DATA_OPTIONS = (*IMAGE_LIST_OPTIONS, "base", "labels")

# Choices of options (each checked by the parser, and again by the core for --config values)
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step", "late-step")
# step: ×0.5 from half the budget on; late-step: ×0.2 from 80% of it (the paper's SSL: 160K of 200K)
BN_BATCHES = ("pooled", "per-term")
LOSS_REDUCTIONS = ("sum", "mean")
SELECTIONS = ("last", "best-val")
SEARCHES = ("grid", "greedy", "binary")
BRANCH_MODES = ("joint", "per-task")
OPTIMIZER_STATES = ("keep", "reset")
MERGE_HEADS = ("all", "shared")
MERGE_OPS = ("average", "ties", "dare")
AUX_KINDS = ("task", "weight-decay")
PAIR_METHODS = ("ew", "forkmerge")
FORMATS = ("png", "svg")
# Speed on an accelerator (ntlab.core.speed): the training's arithmetic, the layout of image
# tensors, torch.compile's mode, and how ForkMerge's branches share a device
PRECISIONS = ("fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "contiguous", "channels-last")
COMPILE_MODES = ("off", "default", "reduce-overhead", "captured")
BRANCH_EXEC = ("sequential", "concurrent")
DECODERS = ("cpu", "gpu")  # image lists: JPEGs decoded by the loader workers, or on the GPU

KINDS = ("static", "loss weighting", "gradient balancing", "auxiliary", "procedure")


@dataclass(frozen=True)
class MethodInfo:
    """What `ntlab methods` shows of a method: its kind, one line, and its paper."""

    kind: str
    summary: str
    paper: str


_ = MethodInfo
METHOD_INFO: dict[str, MethodInfo] = {
    "stl": _("static", "single-task learning: the target alone", "the reference of every TG"),
    "ew": _(
        "static",
        "equal weighting: target + every auxiliary task, each its own batch, weight 1",
        "the usual multi-task baseline",
    ),
    "fixed": _(
        "static",
        "Eq. 1: target (weight 1) + the auxiliary tasks mixed into one, weight λ",
        "Jiang et al., ForkMerge, NeurIPS 2023, Eq. 1",
    ),
    "uw": _(
        "loss weighting",
        "uncertainty weighting: a learned log-variance per task",
        "Kendall, Gal & Cipolla, CVPR 2018",
    ),
    "dwa": _(
        "loss weighting",
        "dynamic weight average: weights from the losses' rates of descent",
        "Liu, Johns & Davison, CVPR 2019",
    ),
    "gradnorm": _(
        "loss weighting",
        "gradient normalisation, α = 1.5: balances the tasks' gradient norms",
        "Chen et al., ICML 2018",
    ),
    "rlw": _(
        "loss weighting",
        "random loss weighting: softmax of normal draws every step",
        "Lin et al., TMLR 2022",
    ),
    "mgda": _(
        "gradient balancing",
        "multiple-gradient descent, min-norm point; TorchJD",
        "Sener & Koltun, NeurIPS 2018",
    ),
    "pcgrad": _(
        "gradient balancing",
        "projecting conflicting gradients; TorchJD",
        "Yu et al., NeurIPS 2020",
    ),
    "imtl": _(
        "gradient balancing",
        "impartial MTL, gradient part IMTL-G; TorchJD",
        "Liu et al., ICLR 2021",
    ),
    "cagrad": _(
        "gradient balancing",
        "conflict-averse gradient descent, c = 0.4; TorchJD",
        "Liu et al., NeurIPS 2021",
    ),
    "nashmtl": _(
        "gradient balancing",
        "Nash bargaining over task gradients; TorchJD",
        "Navon et al., ICML 2022",
    ),
    "gradvac": _(
        "gradient balancing",
        "gradient vaccine, β = 0.5; TorchJD",
        "Wang et al., ICLR 2021",
    ),
    "upgrad": _(
        "gradient balancing",
        "unconflicting projection of gradients; TorchJD",
        "Quinton & Rey, Jacobian descent (TorchJD), 2024",
    ),
    "aligned-mtl": _(
        "gradient balancing",
        "aligned MTL: the gradients' principal components aligned; TorchJD",
        "Senushkin et al., CVPR 2023",
    ),
    "gcs": _(
        "auxiliary",
        "auxiliary gradient only where it agrees with the target's",
        "Du et al., arXiv 1812.02224, 2018",
    ),
    "ol-aux": _(
        "auxiliary",
        "weights from target–auxiliary gradient cosines, every 5 steps",
        "Lin et al., NeurIPS 2019",
    ),
    "arml": _(
        "auxiliary",
        "weights that make Σ α_k g_k match the target gradient",
        "Shi et al., NeurIPS 2020",
    ),
    "auto-lambda": _(
        "auxiliary",
        "meta-gradient of the target's validation loss",
        "Liu et al., TMLR 2022",
    ),
    "post-train": _(
        "auxiliary",
        "EW for the first half of the budget, then the target alone",
        "the ForkMerge paper's baseline (Jiang et al., NeurIPS 2023, §5)",
    ),
    "grid-search": _(
        "procedure",
        "the fixed-λ grid (sweep's default --lams), λ chosen on validation",
        "Jiang et al., NeurIPS 2023, §5",
    ),
    "forkmerge": _(
        "procedure",
        "ForkMerge with one branch per auxiliary task (defaults of forkmerge train)",
        "Jiang et al., NeurIPS 2023, Algorithms 1–3",
    ),
}
del _

PROCEDURES = tuple(m for m, info in METHOD_INFO.items() if info.kind == "procedure")
# Methods whose rule reads gradients (the Jacobian aggregators, GradNorm's norms, the
# auxiliary-task methods' cosines and meta-gradients): they train in fp32 whatever
# --precision says. fp16 needs loss scaling, which only a static weighted sum takes as is.
FP32_METHODS = tuple(
    m
    for m, info in METHOD_INFO.items()
    if info.kind in ("gradient balancing", "auxiliary") and m != "post-train" or m == "gradnorm"
)
FP16_METHODS = ("stl", "ew", "fixed", *PROCEDURES)


def method_names() -> list[str]:
    """Every method `train` and `compare` accept, grouped by kind (static, loss weighting,
    gradient balancing, auxiliary-task methods, then the procedures)."""
    return sorted(METHOD_INFO, key=lambda m: KINDS.index(METHOD_INFO[m].kind))


EXECUTORS = ("local", "ray")  # ntlab.core.executor: worker processes, or Ray tasks
