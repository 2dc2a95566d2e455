"""Hard parameter sharing: one backbone, one linear head per task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiTaskModel(nn.Module):
    """A shared backbone and one linear head per task, in the order of `task_classes`."""

    def __init__(self, backbone: nn.Module, task_classes: dict[str, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.task_names = list(task_classes)
        self.heads = nn.ModuleList(
            nn.Linear(backbone.out_features, c) for c in task_classes.values()
        )

    def head_index(self, task: str) -> int:
        return self.task_names.index(task)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def logits(self, features: torch.Tensor, head: int) -> torch.Tensor:
        return self.heads[head](features)

    def routed_loss(
        self, features: torch.Tensor, y: torch.Tensor, heads: torch.Tensor, present: list[int]
    ) -> torch.Tensor:
        """Mean cross-entropy of each sample under its own task's head."""
        if len(present) == 1:
            return F.cross_entropy(self.heads[present[0]](features), y)
        if len({self.heads[h].out_features for h in present}) == 1:
            # One matmul over the stacked heads, then each sample picks its own: no masks.
            weight = torch.cat([self.heads[h].weight for h in present])
            bias = torch.cat([self.heads[h].bias for h in present])
            out = (features @ weight.T + bias).view(len(y), len(present), -1)
            lut = torch.full((len(self.heads),), -1, dtype=torch.long, device=y.device)
            lut[torch.tensor(present, device=y.device)] = torch.arange(
                len(present), device=y.device
            )
            return F.cross_entropy(out[torch.arange(len(y), device=y.device), lut[heads]], y)
        total = features.new_zeros(())
        for h in present:
            mask = heads == h
            total = total + F.cross_entropy(self.heads[h](features[mask]), y[mask], reduction="sum")
        return total / len(y)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class frozen_batchnorm_statistics:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within the block, BatchNorm layers in train mode normalise with the batch's own
    statistics (as in training) but update none of their buffers: running mean, variance
    and `num_batches_tracked` stay bitwise what they were.

    Measurements that take gradient passes on a trained model θ_T (gcs, Auto-λ's meta
    steps) use it, so that θ_T — buffers included — is exactly the trained model.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = batchnorm_layers(model)
        self.saved: list[bool] = []

    def __enter__(self) -> frozen_batchnorm_statistics:
        self.saved = [m.track_running_stats for m in self.layers]
        for m in self.layers:
            m.track_running_stats = False  # train mode: batch statistics, no buffer update
        return self

    def __exit__(self, *exc) -> None:
        for m, tracked in zip(self.layers, self.saved):
            m.track_running_stats = tracked
