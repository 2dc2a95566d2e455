"""What a task is, apart from its data: a head built on the backbone's output, a loss, and
metrics (each with its direction, one of them primary).

Every number ntlab compares — ForkMerge's P̂, TG, the regimes, the grid search, `compare` —
is the target's primary metric, turned by its direction so that a positive TG always means
the auxiliary tasks helped (`orient`). A task evaluates through an *evaluator*: an
accumulator with `update(prediction, target)` per chunk of a split and `compute()` → metric
name → value, so that no split's predictions need to be held at once (a dense task's
logits would not fit).

The test-set noise of a one-seed TG needs the two models' results paired on the same test
samples. Classification keeps which test images each model got right (McNemar's paired SE,
`ntlab.metrics`); any other primary metric is also measured on FOLDS fixed disjoint parts of
the test set (seeded, the same for every model of a benchmark), and the SE of the TG is the
spread of the per-fold differences over √FOLDS (`ntlab.metrics.fold_se`).

Built-in tasks: `classification_task` (a linear head, cross-entropy, accuracy), and the
dense tasks `segmentation_task`, `depth_task` and `normal_task` (ntlab.dense_metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ntlab.errors import NtlabError
from ntlab.metrics import directions

FOLDS = 20  # disjoint parts of a test set on which a non-classification primary is measured
FOLD_SEED = 0
CLASSIFICATION, DENSE, CUSTOM = "classification", "dense", "custom"

HeadFactory = Callable[[int, tuple[int, ...]], nn.Module]  # (backbone out size, input shape)


class Evaluator:
    """Accumulates one split's predictions chunk by chunk; `compute` gives the metrics."""

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def compute(self) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError


class FunctionEvaluator(Evaluator):
    """Metrics given as functions (prediction, target) → number over a whole split: the
    chunks are kept (on the CPU) and each function is called once on all of them."""

    def __init__(self, metrics: Mapping[str, Callable]) -> None:
        self.metrics = dict(metrics)
        self.preds: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.preds.append(pred.detach().cpu())
        self.targets.append(target.detach().cpu())

    def compute(self) -> dict[str, float]:
        pred, target = torch.cat(self.preds), torch.cat(self.targets)
        out = {}
        for name, fn in self.metrics.items():
            value = fn(pred, target)
            out[name] = float(value.item() if isinstance(value, torch.Tensor) else value)
        return out


@dataclass
class TaskSpec:
    """A task's head, loss and metrics (its data lives in `ntlab.data.TaskData`)."""

    kind: str
    head: HeadFactory | None  # None: the backbone's own head for `outputs` channels
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: dict[str, bool]  # name → higher is better, in the order tables show them
    primary: str
    evaluator: Callable[[], Evaluator] | None = None  # None: classification's own
    num_classes: int | None = None
    outputs: int | None = None  # what the default head outputs (classes, channels)
    description: str = ""
    delta_m_metrics: tuple[str, ...] | None = None  # what Δm averages (None: every metric)
    # Views per sample: >1 means each input is [views, C, H, W] (e.g. augmented copies of
    # one image); the backbone sees the views as samples of their own, the head's output
    # per sample is [views, ...] and the loss and evaluator read it so (`flat_views`)
    views: int = 1

    def __post_init__(self) -> None:
        if type(self.views) is not int or self.views < 1:
            raise NtlabError(f"a task has a whole number ≥ 1 of views per sample, got {self.views}")
        if self.views > 1 and self.kind != CUSTOM:
            raise NtlabError(
                f"only a custom task takes several views per sample ({self.kind} losses and "
                "metrics read one output per sample)"
            )
        for name in self.delta_m_metrics or ():
            if name not in self.metrics:
                raise NtlabError(f"Δm metric {name!r} is not among the task's metrics")
        if self.primary not in self.metrics:
            raise NtlabError(
                f"the primary metric {self.primary!r} is not among the task's metrics "
                f"({', '.join(self.metrics) or 'none'})"
            )

    @property
    def higher_is_better(self) -> bool:
        return self.metrics[self.primary]

    @property
    def delta_m_over(self) -> dict[str, bool]:
        """The metrics Δm averages, each with its direction."""
        names = self.delta_m_metrics or tuple(self.metrics)
        return {name: self.metrics[name] for name in names}

    @property
    def is_classification(self) -> bool:
        return self.kind == CLASSIFICATION


def flat_views(x: torch.Tensor, views: int) -> torch.Tensor:
    """Inputs of a task with `views` > 1 ([B, V, C, H, W]) as the backbone takes them:
    [B·V, C, H, W], the views of a sample adjacent; other inputs unchanged (whatever their
    rank: a volume [B, C, D, H, W] is not views)."""
    if views <= 1:
        return x
    if x.dim() < 3 or x.shape[1] != views:
        raise NtlabError(
            f"inputs of a task with {views} views are [B, {views}, …], got {list(x.shape)}"
        )
    return x.flatten(0, 1)


def per_sample(out: torch.Tensor, x: torch.Tensor, views: int) -> torch.Tensor:
    """Outputs of `flat_views(x, views)` regrouped per sample: [B·V, ...] → [B, V, ...]
    where `views` > 1; unchanged otherwise (what a task's evaluator reads)."""
    return out.view(len(x), views, *out.shape[1:]) if views > 1 else out


def orient(value: float, higher_is_better: bool) -> float:
    """`value` turned so that larger is better (exact: x or −x)."""
    return value if higher_is_better else -value


def build_head(spec: TaskSpec, backbone: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """The task's head on `backbone`: its own factory, else the backbone's default head
    for `spec.outputs` (a backbone's own `task_head(outputs)` where it has one, e.g. a
    recommendation model's towers; a linear layer on a feature vector; a dense backbone's
    `dense_head(in_channels, outputs, (H, W))` on a feature map)."""
    features = backbone.out_features
    if spec.head is not None:
        return spec.head(features, tuple(input_shape))
    own = getattr(backbone, "task_head", None)  # a backbone whose heads are its own kind
    if own is not None and spec.kind != DENSE:
        if spec.outputs is None:
            raise NtlabError("a task without a head needs `outputs` (its classes or channels)")
        return own(spec.outputs)
    if spec.outputs is None:
        raise NtlabError("a task without a head needs `outputs` (its classes or channels)")
    dense = getattr(backbone, "dense_head", None)
    if spec.kind == DENSE:
        if dense is None:
            raise NtlabError(
                "a dense task needs a fully-convolutional backbone (e.g. --backbone fcn); "
                f"{type(backbone).__name__} gives one feature vector per image"
            )
        return dense(features, spec.outputs, tuple(input_shape[-2:]))
    return nn.Linear(features, spec.outputs)


def classification_task(num_classes: int, primary: str = "acc") -> TaskSpec:
    """A linear head, cross-entropy, and accuracy (percentage points) as the primary metric;
    evaluation also reports the loss, the mean confidence and the CSD (Eq. 4).

    `primary="error"`: the test error (100 − accuracy, lower is better) is the primary
    metric instead, as semi-supervised papers report it; the TG and its paired SE are the
    same numbers either way."""
    if primary not in ("acc", "error"):
        raise NtlabError(f"a classification's primary metric is acc or error, not {primary!r}")
    names = ("error", "acc") if primary == "error" else ("acc",)
    return TaskSpec(
        kind=CLASSIFICATION,
        head=None,
        loss=F.cross_entropy,
        metrics=directions(*names, "loss", "confidence", "csd"),
        primary=primary,
        delta_m_metrics=(primary,),  # the others are diagnostics
        num_classes=num_classes,
        outputs=num_classes,
        description=f"{num_classes}-way classification",
    )


# --- dense tasks ------------------------------------------------------------------------


class _Meter(Evaluator):
    """A dense_metrics meter, with the metrics in percent where they are shares."""

    def __init__(self, meter, percent: tuple[str, ...] = ()) -> None:
        self.meter, self.percent = meter, percent

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.meter.update(pred, target)

    def compute(self) -> dict[str, float]:
        values = self.meter.compute()
        return {k: 100.0 * v if k in self.percent else v for k, v in values.items()}


def segmentation_task(classes: int, head: HeadFactory | None = None) -> TaskSpec:
    """Per-pixel classification: cross-entropy ignoring −1; mIoU (primary) and pixel
    accuracy, both in percent."""
    from ntlab import dense_metrics as dm

    return TaskSpec(
        kind=DENSE,
        head=head,
        loss=dm.segmentation_loss,
        metrics=directions("miou", "pixel_acc"),
        primary="miou",
        evaluator=lambda: _Meter(dm.SegmentationMeter(classes), ("miou", "pixel_acc")),
        num_classes=classes,
        outputs=classes,
        description=f"per-pixel segmentation into {classes} classes",
    )


def depth_task(head: HeadFactory | None = None) -> TaskSpec:
    """Per-pixel depth: L1 on valid pixels (target > 0); absolute error (primary) and
    relative error, lower is better."""
    from ntlab import dense_metrics as dm

    return TaskSpec(
        kind=DENSE,
        head=head,
        loss=dm.depth_loss,
        metrics=directions("abs_err", "rel_err"),
        primary="abs_err",
        evaluator=lambda: _Meter(dm.DepthMeter()),
        outputs=1,
        description="per-pixel depth regression",
    )


def normal_task(head: HeadFactory | None = None) -> TaskSpec:
    """Per-pixel surface normals: 1 − cosine on valid pixels; mean angle (primary) and
    median angle in degrees (lower is better), and the share of pixels within 11.25°, 22.5°
    and 30° (percent, higher is better)."""
    from ntlab import dense_metrics as dm

    within = tuple(f"within_{t:g}" for t in dm.NORMAL_THRESHOLDS)
    return TaskSpec(
        kind=DENSE,
        head=head,
        loss=dm.normal_loss,
        metrics=directions("mean_angle", "median_angle", *within),
        primary="mean_angle",
        evaluator=lambda: _Meter(dm.NormalMeter(), within),
        outputs=3,
        description="per-pixel surface-normal regression",
    )


# --- evaluation on folds --------------------------------------------------------------


def fold_ids(n: int, device: torch.device | str = "cpu", folds: int = FOLDS) -> torch.Tensor:
    """The fold (0..folds−1) of each of n test samples: a seeded permutation dealt round
    robin, so the folds are disjoint, of sizes differing by at most one, and the same for
    every model measured on the same n samples."""
    g = torch.Generator().manual_seed(FOLD_SEED)
    ids = torch.empty(n, dtype=torch.long)
    ids[torch.randperm(n, generator=g)] = torch.arange(n) % folds
    return ids.to(device)


class FoldedEvaluator:
    """A task's evaluator over the whole split, and one per fold (for the SE of a TG)."""

    def __init__(self, spec: TaskSpec, n: int, device, folds: int = FOLDS) -> None:
        self.spec = spec
        self.all = spec.evaluator()
        self.folds = min(folds, n) if n >= 2 and folds >= 2 else 0
        self.parts = [spec.evaluator() for _ in range(self.folds)]
        self.ids = fold_ids(n, device, self.folds) if self.folds else None
        self.at = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.all.update(pred, target)
        if self.folds:
            ids = self.ids[self.at : self.at + len(pred)]
            for f, part in enumerate(self.parts):
                keep = ids == f
                if bool(keep.any()):
                    part.update(pred[keep], target[keep])
        self.at += len(pred)

    def compute(self) -> tuple[dict[str, float], list[float] | None]:
        values = self.all.compute()
        if not self.folds:
            return values, None
        primary = self.spec.primary
        return values, [part.compute()[primary] for part in self.parts]
