"""Benchmarks: named sets of tasks, each with train/val/test images and labels.

Small benchmarks hold their images in memory as uint8 tensors; image-list benchmarks hold
`ImageFiles` (decoded on demand). The training core handles both through
`ntlab.data.files` (`to_float`, `labelled_chunks`, `take`) and `BatchSource`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ntlab.catalog import DATA_OPTIONS, IMAGE_LIST_OPTIONS  # noqa: F401  (re-exported)
from ntlab.errors import NtlabError
from ntlab.registry import Registry
from ntlab.tasks import TaskSpec, classification_task

SPLITS = ("train", "val", "test")


@dataclass
class TaskData:
    """One task's data, per split: inputs (uint8 images [N, C, H, W], ImageFiles, or any
    tensor whose first dimension is the sample) and targets (class labels, or any tensor
    of the task's targets, e.g. per-pixel maps), and what the task is (`spec`: its head,
    loss and metrics; classification into `num_classes` classes when not given)."""

    name: str
    num_classes: int | None
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    spec: TaskSpec | None = field(default=None, repr=False)
    # what a backbone must know of the inputs beyond their shape (e.g. a tabular
    # benchmark's vocabulary size per categorical field); given to the backbone's factory
    inputs: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.spec is None:
            if self.num_classes is None:
                raise ValueError(f"task {self.name} needs a spec or a number of classes")
            self.spec = classification_task(self.num_classes)

    def x(self, split: str):
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

    def fingerprint(self) -> str | dict:
        """Changes whenever the data would change (for caches and run configs; JSON)."""

    def load(self, tasks: list[str], device: torch.device | str = "cpu") -> dict[str, TaskData]:
        """Only the named tasks' data, on `device`."""

    def describe(self) -> list[dict]:
        """One row per task for `ntlab data list`."""


BENCHMARKS: Registry[type] = Registry("benchmark")


def get_benchmark(name: str, **options: object) -> Benchmark:
    """An instance of the registered benchmark `name` (unknown names fail with the choices).

    `options` are the data options of a run (root, domains, image_size, skip_bad_images,
    workers); None means "not given". A benchmark that has no use for one given fails.
    """
    cls = BENCHMARKS.get(name)
    given = {k: v for k, v in options.items() if v not in (None, False)}
    accepted = getattr(cls, "options", IMAGE_LIST_OPTIONS)
    extra = [k for k in given if k not in accepted]
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise NtlabError(f"{flags} {'does' if len(extra) == 1 else 'do'} not apply to {name}")
    return cls(**{k: v for k, v in options.items() if k in accepted})
