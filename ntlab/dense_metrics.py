"""Metrics and losses of dense (per-pixel) tasks: segmentation, depth and surface normals.

Pure torch on plain batched tensors, with no Python loop over pixels or images. They are
the building blocks of the dense tasks of issue 17: the embedded `scenes` benchmark
(ntlab.data.scenes) and NYUv2 (13-class segmentation, depth, normals, as in MTAN and
LibMTL) will train with `segmentation_loss`, `depth_loss` and `normal_loss`, and evaluate
with the meters below, one `update` per test batch and one `compute` per evaluation;
`HIGHER_IS_BETTER` tells Δm and the reports which way each metric improves.

Shapes: segmentation logits [B, C, H, W] (or predicted labels [B, H, W]) and targets
[B, H, W] holding 0..C−1 or `ignore_index`; depth [B, H, W] or [B, 1, H, W] (prediction and
target alike); normals [B, 3, H, W]. Conventions:

- segmentation: `confusion[t, p]` counts pixels of target class t predicted as p, ignored
  pixels excluded. mIoU is the mean IoU over the classes whose union (target or prediction)
  is non-zero, LibMTL's and MTAN's convention: a class absent from both the targets and the
  predictions does not count, one present in either does (with IoU 0 when they never meet).
- depth: a pixel is valid when its target is > 0 (NYUv2 marks missing depth with 0), unless
  a mask is given; absolute error = mean |p − t|, relative error = mean |p − t| / t.
- normals: a pixel is valid when its target vector is non-zero; the error is the angle in
  degrees between the L2-normalised vectors (a zero prediction counts as 90°).
- losses: a scalar mean over valid pixels, and 0 with a (zero) gradient when a batch has
  none, never NaN, even where a target holds NaN or inf at an invalid pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ntlab.metrics import directions

IGNORE_INDEX = -1
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)

# Every metric this module reports → whether higher is better (ntlab.metrics' table).
HIGHER_IS_BETTER: dict[str, bool] = directions(
    "miou", "pixel_acc", "abs_err", "rel_err", "mean_angle", "median_angle",
    *(f"within_{t:g}" for t in NORMAL_THRESHOLDS),
)  # fmt: skip


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{what}: prediction of shape {tuple(pred.shape)} and target of shape "
            f"{tuple(target.shape)} differ"
        )


# --- segmentation ----------------------------------------------------------------------


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """[classes, classes] int64 counts, rows the target class and columns the prediction.

    `pred` is logits [B, C, H, W] (argmax over C) or labels shaped like `target`. Pixels
    whose target is `ignore_index` are left out; matrices of batches add up to the matrix
    of their union.
    """
    if pred.dim() == target.dim() + 1:
        pred = pred.argmax(1)
    _check_same_shape(pred, target, "confusion_matrix")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (t.min() < 0 or t.max() >= classes or p.min() < 0 or p.max() >= classes):
        raise ValueError(
            f"confusion_matrix: labels must lie in 0..{classes - 1} (or be {ignore_index} in "
            f"the target), got target {int(t.min())}..{int(t.max())}, "
            f"prediction {int(p.min())}..{int(p.max())}"
        )
    counts = torch.bincount(t * classes + p, minlength=classes * classes)
    return counts.view(classes, classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of each class, float64; NaN for a class with an empty union."""
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(0) + c.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.nan)


def miou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes with a non-zero union (NaN when no pixel was counted)."""
    iou = iou_per_class(confusion)
    present = ~iou.isnan()
    return float(iou[present].mean()) if present.any() else math.nan


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Share of counted (non-ignored) pixels predicted right (NaN when none was counted)."""
    total = confusion.sum()
    return float(confusion.diagonal().sum().double() / total) if total > 0 else math.nan


# --- depth -----------------------------------------------------------------------------


def _depth_valid(target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return target > 0
    _check_same_shape(valid, target, "depth valid mask")
    return valid.bool()


def depth_error_sums(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """[sum |p − t|, sum |p − t| / t, valid pixels] (float64), to add up over batches."""
    _check_same_shape(pred, target, "depth_errors")
    mask = _depth_valid(target, valid)
    p, t = pred[mask].double(), target[mask].double()
    if t.numel() and t.min() <= 0:
        raise ValueError("depth_errors: the valid mask selects pixels whose target is not > 0")
    err = (p - t).abs()
    return torch.stack([err.sum(), (err / t).sum(), torch.tensor(float(t.numel()))])


def _depth_summary(sums: torch.Tensor) -> dict[str, float]:
    n = float(sums[2])
    if n == 0:
        return {"abs_err": math.nan, "rel_err": math.nan}
    return {"abs_err": float(sums[0]) / n, "rel_err": float(sums[1]) / n}


def depth_errors(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> dict[str, float]:
    """{"abs_err": mean |p − t|, "rel_err": mean |p − t| / t} over the valid pixels (both
    lower is better; NaN when no pixel is valid). `valid` defaults to target > 0."""
    return _depth_summary(depth_error_sums(pred, target, valid))


# --- surface normals -------------------------------------------------------------------


def _normal_valid(target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return (target != 0).any(1)
    if valid.shape != target.shape[:1] + target.shape[2:]:
        raise ValueError(
            f"normal valid mask: shape {tuple(valid.shape)} should be "
            f"{tuple(target.shape[:1] + target.shape[2:])}, the target's without its channels"
        )
    return valid.bool()


def normal_angles(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """The angle in degrees between prediction and target at every valid pixel, 1-D float32.

    Both are [B, 3, H, W] and are L2-normalised here. `valid` [B, H, W] defaults to the
    pixels whose target vector is non-zero. Computed as atan2(|p × t|, p · t), accurate
    near 0° and 180° too; a zero prediction counts as 90°.
    """
    _check_same_shape(pred, target, "normal_angles")
    if pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"normal_angles: expected [B, 3, H, W], got {tuple(pred.shape)}")
    mask = _normal_valid(target, valid)
    p = pred.movedim(1, -1)[mask].float()
    t = target.movedim(1, -1)[mask].float()
    p, t = F.normalize(p, dim=-1), F.normalize(t, dim=-1)
    angle = torch.atan2(torch.linalg.cross(p, t).norm(dim=-1), (p * t).sum(-1))
    angle = torch.where(p.any(-1), angle, math.pi / 2)
    return torch.rad2deg(angle)


def normal_summary(angles: torch.Tensor) -> dict[str, float]:
    """Mean and median angle (lower is better) and the shares of pixels within 11.25°,
    22.5° and 30° (higher is better, in [0, 1]); NaN when there are no angles. The median
    of an even count is the mean of the two middle angles, as NumPy's."""
    if angles.numel() == 0:
        return {k: math.nan for k in ("mean_angle", "median_angle")} | {
            f"within_{t:g}": math.nan for t in NORMAL_THRESHOLDS
        }
    a = angles.double().flatten().sort().values
    n = a.numel()
    median = (a[(n - 1) // 2] + a[n // 2]) / 2
    out = {"mean_angle": float(a.mean()), "median_angle": float(median)}
    for t in NORMAL_THRESHOLDS:
        out[f"within_{t:g}"] = float((a < t).double().mean())
    return out


# --- accumulating over an evaluation ---------------------------------------------------


class SegmentationMeter:
    """mIoU and pixel accuracy over many batches, from one summed confusion matrix."""

    def __init__(self, classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.classes, self.ignore_index = classes, ignore_index
        self.confusion = torch.zeros(classes, classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        m = confusion_matrix(pred, target, self.classes, self.ignore_index)
        self.confusion += m.cpu()

    def compute(self) -> dict[str, float]:
        return {"miou": miou(self.confusion), "pixel_acc": pixel_accuracy(self.confusion)}


class DepthMeter:
    """Absolute and relative depth error over many batches (means over all valid pixels)."""

    def __init__(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64)

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        self.sums += depth_error_sums(pred, target, valid).cpu()

    def compute(self) -> dict[str, float]:
        return _depth_summary(self.sums)


class NormalMeter:
    """Normal angle statistics over many batches. The median needs every angle, so the
    angles of all valid pixels are kept (on the CPU, 4 bytes a pixel)."""

    def __init__(self) -> None:
        self.angles: list[torch.Tensor] = []

    def update(
        self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> None:
        self.angles.append(normal_angles(pred, target, valid).cpu())

    def compute(self) -> dict[str, float]:
        return normal_summary(torch.cat(self.angles) if self.angles else torch.empty(0))


# --- training losses -------------------------------------------------------------------


def _mean_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask`; 0 (still in the graph) when the mask is empty."""
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return total.sum() / mask.sum().clamp_min(1)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy averaged over the non-ignored pixels; logits [B, C, H, W], target
    [B, H, W]."""
    mask = target != ignore_index
    safe = torch.where(mask, target, torch.zeros_like(target)).long()
    per_pixel = F.cross_entropy(logits, safe, reduction="none")
    return _mean_over(per_pixel, mask)


def depth_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """L1 averaged over the valid pixels (`valid` defaults to target > 0)."""
    _check_same_shape(pred, target, "depth_loss")
    mask = _depth_valid(target, valid)
    # An invalid target may hold anything (NaN, inf): replace it before it meets a gradient.
    safe = torch.where(mask, target, pred.detach())
    return _mean_over((pred - safe).abs(), mask)


def normal_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """1 − cosine between the L2-normalised vectors, averaged over the valid pixels
    (`valid` [B, H, W] defaults to a non-zero target vector)."""
    _check_same_shape(pred, target, "normal_loss")
    mask = _normal_valid(target, valid)
    safe = torch.where(mask[:, None], target, torch.ones_like(target))
    cos = (F.normalize(pred, dim=1) * F.normalize(safe, dim=1)).sum(1)
    return _mean_over(1 - cos, mask)
