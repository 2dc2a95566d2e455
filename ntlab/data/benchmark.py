"""Benchmarks: named sets of tasks, each with train/val/test data held as uint8 tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ntlab.registry import Registry

SPLITS = ("train", "val", "test")


@dataclass
class TaskData:
    """One task's data: images as uint8 [N, C, H, W] and integer labels, per split."""

    name: str
    num_classes: int
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    def x(self, split: str) -> torch.Tensor:
        return self.splits[split][0]

    def y(self, split: str) -> torch.Tensor:
        return self.splits[split][1]

    def size(self, split: str) -> int:
        return int(self.splits[split][1].shape[0])


class Benchmark(Protocol):
    """What the training core needs from a benchmark."""

    name: str
    description: str

    def tasks(self) -> list[str]:
        """The task names, in a stable order."""

    def fingerprint(self) -> str:
        """Changes whenever the data would change (for caches and run configs)."""

    def load(self, tasks: list[str], device: torch.device | str = "cpu") -> dict[str, TaskData]:
        """Only the named tasks' data, on `device`."""

    def describe(self) -> list[dict]:
        """One row per task for `ntlab data list`."""


BENCHMARKS: Registry[type] = Registry("benchmark")


def get_benchmark(name: str) -> Benchmark:
    """An instance of the registered benchmark `name` (unknown names fail with the choices)."""
    return BENCHMARKS.get(name)()
