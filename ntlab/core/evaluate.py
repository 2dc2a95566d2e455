"""Evaluation of one task on one split, batched, without copying data off the device.

A classification task reports accuracy (percentage points), mean cross-entropy, mean
max-softmax confidence and the CSD (Eq. 4), and which images it got right; any other task
reports its own metrics (`ntlab.tasks`), and its primary metric on the test folds. Either
is what pairs two models' test results image by image for the SE of a TG
(`ntlab.metrics.tg_noise`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ntlab.data.benchmark import TaskData
from ntlab.data.files import Images, labelled_chunks
from ntlab.metrics import accuracy, confidence_score_discrepancy, pack_correct
from ntlab.models.multitask import MultiTaskModel
from ntlab.tasks import FOLDS, FoldedEvaluator, TaskSpec, flat_views, orient, per_sample

CHUNK = 4096  # inputs per forward pass (classification)
DENSE_CHUNK = 256


def predict(
    model: MultiTaskModel, task: str, x: Images, y: torch.Tensor, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs of `task`'s head, targets) for inputs `x` with targets `y` (images skipped
    as unreadable are left out of both)."""
    logits, labels = [], []
    for_each_chunk(
        model, task, x, y, chunk, lambda out, ys: (logits.append(out), labels.append(ys))
    )
    return torch.cat(logits), torch.cat(labels)


@torch.inference_mode()
def for_each_chunk(
    model: MultiTaskModel, task: str, x: Images, y: torch.Tensor, chunk: int, consume
) -> None:
    """`consume(head outputs, targets)` chunk by chunk, in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    head = model.head_index(task)
    views = model.specs[head].views
    try:
        for images, ys in labelled_chunks(x, y, chunk):
            with model.autocast():
                out = model.logits(model.features(flat_views(images, views)), head)
            # outputs per sample ([b, V, ...] for views); metrics in fp32 (no-op for fp32 models)
            consume(per_sample(out, images, views).float(), ys)
    finally:
        model.train(was_training)


def evaluate(model: MultiTaskModel, data: TaskData, split: str) -> dict[str, float]:
    """Every metric of the task on `split` (see the module docstring)."""
    return evaluate_paired(model, data, split)[0]


def score(model: MultiTaskModel, data: TaskData, split: str) -> float:
    """The task's primary metric on `split`, in its own units and direction."""
    return evaluate(model, data, split)[data.spec.primary]


def oriented_score(model: MultiTaskModel, data: TaskData, split: str) -> float:
    """The primary metric turned so that larger is better (what searches maximise)."""
    return orient(score(model, data, split), data.spec.higher_is_better)


def evaluate_on(
    model: MultiTaskModel,
    task: str,
    spec: TaskSpec,
    x: Images,
    y: torch.Tensor,
    pair: bool = True,
) -> tuple[dict[str, float], dict]:
    """The task's metrics on inputs `x` and targets `y`, and what pairs the result with
    another model's on the same samples: {"correct": booleans} for classification,
    {"folds": the primary metric on each test fold} for the others (`pair=False`: no
    folds, e.g. for a merge search's candidates)."""
    if spec.is_classification:
        logits, labels = predict(model, task, x, y)
        acc = accuracy(logits, labels)
        if not pair:  # a search's candidate: only the primary metric
            return {spec.primary: 100.0 - acc if spec.primary == "error" else acc}, {}
        csd = confidence_score_discrepancy(logits.softmax(1))
        values = {
            **({"error": 100.0 - acc} if "error" in spec.metrics else {}),
            "acc": acc,
            "loss": F.cross_entropy(logits, labels).item(),
            "confidence": 1.0 - csd,
            "csd": csd,
        }
        correct = logits.argmax(1) == labels
        return values, {"correct": correct, "n": int(correct.numel())}
    if spec.evaluator is None:
        raise ValueError(f"task {task} has no evaluator")
    meter = FoldedEvaluator(spec, len(y), y.device, folds=FOLDS if pair else 0)
    for_each_chunk(model, task, x, y, DENSE_CHUNK, meter.update)
    values, folds = meter.compute()
    return values, {"folds": folds, "n": len(y)}


def evaluate_paired(
    model: MultiTaskModel, data: TaskData, split: str
) -> tuple[dict[str, float], dict]:
    """`evaluate_on` the task's split."""
    return evaluate_on(model, data.name, data.spec, data.x(split), data.y(split))


def pairing_fields(pairing: dict) -> dict:
    """The test-set fields every trained run records: `test_n`, and `test_correct` (which
    test images it got right, packed) or `test_folds` (its primary metric per fold)."""
    if pairing.get("correct") is not None:
        return {"test_n": pairing["n"], "test_correct": pack_correct(pairing["correct"])}
    folds = pairing.get("folds")
    return {"test_n": pairing["n"], **({"test_folds": folds} if folds else {})}


def target_results(model: MultiTaskModel, data: TaskData) -> tuple[dict, dict]:
    """({"val": values, "test": values}, the test-set pairing fields (`pairing_fields`))."""
    per_split, kept = {}, {}
    for split in ("val", "test"):
        per_split[split], pairing = evaluate_paired(model, data, split)
        if split == "test":
            kept = pairing_fields(pairing)
    return per_split, kept


def direction(data: TaskData) -> dict:
    """The fields that tell which way a task's primary metric improves."""
    return {"metric": data.spec.primary, "higher_is_better": data.spec.higher_is_better}


def score_fields(spec: TaskSpec, per_split: dict[str, dict[str, float]]) -> dict:
    """What results.json says of the target's numbers: its primary `metric`, its direction,
    `val_score` and `test_score` (the primary metric), and every metric per split."""
    return {
        "metric": spec.primary,
        "higher_is_better": spec.higher_is_better,
        "val_score": per_split["val"][spec.primary],
        "test_score": per_split["test"][spec.primary],
        "target_metrics": {split: dict(values) for split, values in per_split.items()},
        "directions": dict(spec.metrics),
        "delta_m_over": spec.delta_m_over,
    }
