"""Evaluation of one task on one split, batched, without copying data off the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ntlab.core.train import images_to_float
from ntlab.data.benchmark import TaskData
from ntlab.metrics import accuracy, confidence_score_discrepancy
from ntlab.models.multitask import MultiTaskModel


@torch.inference_mode()
def predict(model: MultiTaskModel, task: str, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Logits of `task`'s head for uint8 images `x`."""
    was_training = model.training
    model.eval()
    head = model.head_index(task)
    out = torch.cat(
        [model.logits(model.features(images_to_float(part)), head) for part in x.split(chunk)]
    )
    model.train(was_training)
    return out


def evaluate(model: MultiTaskModel, data: TaskData, split: str) -> dict[str, float]:
    """Accuracy (percentage points), mean cross-entropy, mean max-softmax confidence and
    the confidence score discrepancy (Eq. 4: one minus that confidence)."""
    logits = predict(model, data.name, data.x(split))
    y = data.y(split)
    csd = confidence_score_discrepancy(logits.softmax(1))
    return {
        "acc": accuracy(logits, y),
        "loss": F.cross_entropy(logits, y).item(),
        "confidence": 1.0 - csd,
        "csd": csd,
    }
