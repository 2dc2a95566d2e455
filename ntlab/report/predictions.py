"""`predictions.pt`: a few test images of a dense target with each dense task's ground truth
and the final model's prediction, for the report's predictions figure
(`ntlab.report.figures.dense_predictions_figure`).

The file holds small CPU tensors: `image` (uint8 [n, C, H, W]), `target`, `split`, `index`
(the test images shown) and `tasks[name]` = {`kind`, `truth`, `pred`, `classes`} with kind
`segmentation` (int64 labels [n, H, W], −1 ignored; the prediction is the argmax),
`depth` (float16 [n, H, W], 0 = invalid) or `normal` (float16 [n, 3, H, W], the prediction
normalised to unit length).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ntlab.data.benchmark import TaskData
from ntlab.data.files import to_float
from ntlab.models.multitask import MultiTaskModel
from ntlab.storage import save_torch_file
from ntlab.tasks import DENSE

PREDICTIONS_FILE = "predictions.pt"
IMAGES = 4


def _kind(data: TaskData) -> str | None:
    """How a dense task's maps are drawn: by its outputs (classes, one channel, three)."""
    spec = data.spec
    if spec.num_classes:
        return "segmentation"
    return {1: "depth", 3: "normal"}.get(spec.outputs or 0)


def dense_predictions(
    model: MultiTaskModel, data: dict[str, TaskData], target: str, count: int = IMAGES
) -> dict | None:
    """The first `count` test images of `target` with every trained dense task's truth and
    prediction on them; None when the target is not dense (or its images are not a tensor)."""
    if model.spec(target).kind != DENSE:
        return None
    x = data[target].x("test")
    if not isinstance(x, torch.Tensor) or not len(x):
        return None
    images = x[:count]
    tasks = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = model.features(to_float(images))
            for name in model.task_names:
                task = data.get(name)
                if task is None or model.spec(name).kind != DENSE or _kind(task) is None:
                    continue
                own = task.x("test")
                if own is not x and not (
                    isinstance(own, torch.Tensor)
                    and own.shape == x.shape
                    and torch.equal(own[:count], images)
                ):
                    continue  # a task on other images: nothing to show beside these
                out = model.logits(features, model.head_index(name))
                truth = task.y("test")[:count]
                kind = _kind(task)
                if kind == "segmentation":
                    pred, truth = out.argmax(1), truth.long()
                elif kind == "depth":
                    pred = out[:, 0].half()
                    truth = (truth[:, 0] if truth.dim() == 4 else truth).half()
                else:
                    pred, truth = F.normalize(out.float(), dim=1).half(), truth.half()
                tasks[name] = {
                    "kind": kind,
                    "truth": truth.cpu().clone(),  # not a view of the whole split
                    "pred": pred.cpu().clone(),
                    "classes": task.spec.num_classes,
                }
    finally:
        model.train(was_training)
    return {
        "image": (images if images.dtype == torch.uint8 else _as_uint8(images)).cpu().clone(),
        "target": target,
        "split": "test",
        "index": list(range(len(images))),
        "tasks": tasks,
    }


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images normalised to [−1, 1] (`to_float`) back to uint8."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def write_predictions(
    run_path: Path, model: MultiTaskModel, data: dict[str, TaskData], target: str
) -> Path | None:
    """Write `predictions.pt` into the run directory (atomic) for a dense target; None (and
    nothing written) for any other."""
    blob = dense_predictions(model, data, target)
    if blob is None or not blob["tasks"]:
        return None
    path = Path(run_path) / PREDICTIONS_FILE
    save_torch_file(blob, path)
    return path
