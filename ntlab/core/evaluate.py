"""Evaluation of one task on one split, batched, without copying data off the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ntlab.data.benchmark import TaskData
from ntlab.data.files import Images, labelled_chunks
from ntlab.metrics import accuracy, confidence_score_discrepancy
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
    logits, y = predict(model, data.name, data.x(split), data.y(split))
    csd = confidence_score_discrepancy(logits.softmax(1))
    return {
        "acc": accuracy(logits, y),
        "loss": F.cross_entropy(logits, y).item(),
        "confidence": 1.0 - csd,
        "csd": csd,
    }
