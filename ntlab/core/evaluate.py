"""Evaluation of one task on one split, batched, without copying data off the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ntlab.data.benchmark import TaskData
from ntlab.data.files import Images, labelled_chunks
from ntlab.metrics import accuracy, confidence_score_discrepancy, pack_correct
from ntlab.models.multitask import MultiTaskModel


@torch.inference_mode()
def predict(
    model: MultiTaskModel, task: str, x: Images, y: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of `task`'s head, labels) for images `x` with labels `y` (images skipped as
    unreadable are left out of both)."""
    was_training = model.training
    model.eval()
    head = model.head_index(task)
    logits, labels = [], []
    for images, ys in labelled_chunks(x, y, chunk):
        logits.append(model.logits(model.features(images), head))
        labels.append(ys)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: MultiTaskModel, data: TaskData, split: str) -> dict[str, float]:
    """Accuracy (percentage points), mean cross-entropy, mean max-softmax confidence and
    the confidence score discrepancy (Eq. 4: one minus that confidence)."""
    return evaluate_with_correct(model, data, split)[0]


def evaluate_with_correct(
    model: MultiTaskModel, data: TaskData, split: str
) -> tuple[dict[str, float], torch.Tensor]:
    """`evaluate`, and which images of the split the model got right (booleans, in the
    split's order: two models' results pair up image by image, `ntlab.metrics.tg_noise`)."""
    logits, y = predict(model, data.name, data.x(split), data.y(split))
    csd = confidence_score_discrepancy(logits.softmax(1))
    values = {
        "acc": accuracy(logits, y),
        "loss": F.cross_entropy(logits, y).item(),
        "confidence": 1.0 - csd,
        "csd": csd,
    }
    return values, logits.argmax(1) == y


def target_results(model: MultiTaskModel, data: TaskData) -> tuple[dict, dict]:
    """({"val": values, "test": values}, the test-set fields every trained run records:
    `test_n` and `test_correct`, which test images the model got right, packed)."""
    per_split, correct = {}, None
    for split in ("val", "test"):
        per_split[split], right = evaluate_with_correct(model, data, split)
        if split == "test":
            correct = right
    return per_split, {"test_n": int(correct.numel()), "test_correct": pack_correct(correct)}
