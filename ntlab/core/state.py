"""The training state: model, optimiser, schedule, step, samplers; forkable, checkpointable."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ntlab.catalog import OPTIMIZERS, SCHEDULES  # noqa: F401  (re-exported)
from ntlab.data.sampler import BatchSource
from ntlab.errors import unknown_name
from ntlab.models.multitask import MultiTaskModel
from ntlab.storage import DamagedFileError, load_torch_file, save_torch_file, short_reason


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"
    backbone_lr_scale: float = 1.0  # the backbone's rate is lr × this (the paper: 0.1)


class Schedule:
    """Learning-rate multiplier as a function of the global step (picklable, unlike a lambda)."""

    def __init__(self, kind: str, total_steps: int) -> None:
        if kind not in SCHEDULES:
            raise unknown_name("schedule", kind, SCHEDULES)
        self.kind, self.total_steps = kind, max(1, total_steps)

    def __call__(self, step: int) -> float:
        if self.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        if self.kind == "step":  # the rate halved from half the budget on (NYUv2's epoch 100)
            return 0.5 if step >= self.total_steps // 2 else 1.0
        if self.kind == "late-step":  # ×0.2 from 80% of the budget on (SSL's 160K of 200K)
            return 0.2 if step >= self.total_steps * 4 // 5 else 1.0
        return 1.0


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """One group at lr; or, with a backbone scale ≠ 1, the backbone at lr × scale first and
    the rest (the heads) at lr."""
    if cfg.backbone_lr_scale == 1.0 or not hasattr(model, "backbone"):
        return [{"params": list(model.parameters())}]
    backbone = {id(p) for p in model.backbone.parameters()}
    return [
        {"params": list(model.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_scale},
        {"params": [p for p in model.parameters() if id(p) not in backbone]},
    ]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            foreach=True,
        )
    raise unknown_name("optimizer", cfg.name, OPTIMIZERS)


@dataclass
class TrainState:
    """Everything a training needs to continue exactly where it stopped.

    The learning rate of step t is `initial_lr × schedule(t)` (LambdaLR's rule), set by
    `apply_schedule()`: no torch scheduler object, so nothing patches the optimiser and a
    fork or a checkpoint is just the model, the optimiser, the step and the samplers.
    """

    model: MultiTaskModel
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    step: int = 0
    sources: dict[str, BatchSource] = field(default_factory=dict)
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scale (ntlab.core.speed)
    captured: dict = field(default_factory=dict)  # --compile captured: its CUDA graphs

    @classmethod
    def create(cls, model: MultiTaskModel, optim: OptimConfig, total_steps: int) -> TrainState:
        from ntlab.core.speed import grad_scaler

        optimizer = build_optimizer(model, optim)
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        scaler = grad_scaler(next(model.parameters()).device, model.precision)
        state = cls(model, optimizer, Schedule(optim.schedule, total_steps), scaler=scaler)
        state.apply_schedule()
        return state

    def apply_schedule(self) -> None:
        """Set the learning rate of the coming step."""
        factor = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):  # a captured step reads it on the device
                group["lr"].fill_(group["initial_lr"] * factor)
            else:
                group["lr"] = group["initial_lr"] * factor

    def fork(self) -> TrainState:
        """An independent copy: own parameters, optimiser moments and sampler positions.

        Model and optimiser are deep-copied together so that the copied optimiser points
        at the copied parameters; the (large) data tensors are shared.
        """
        model, optimizer = copy.deepcopy((self.model, self.optimizer))
        sources = {name: src.fork() for name, src in self.sources.items()}
        scaler = None
        if self.scaler is not None:
            scaler = torch.amp.GradScaler(next(model.parameters()).device.type)
            scaler.load_state_dict(self.scaler.state_dict())
        return TrainState(model, optimizer, self.schedule, self.step, sources, scaler)

    def state_dict(self) -> dict:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "sources": {name: src.state_dict() for name, src in self.sources.items()},
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        for name, src_state in state["sources"].items():
            if name in self.sources:
                self.sources[name].load_state_dict(src_state)
        self.apply_schedule()

    def save(self, path: Path) -> None:
        """Checkpoint atomically (temp file, then rename)."""
        save_torch_file(self.state_dict(), Path(path))

    def load(self, path: Path, fix: str = "start the training again") -> None:
        """Continue from a checkpoint; a damaged one raises DamagedFileError naming it."""
        device = next(self.model.parameters()).device
        saved = load_torch_file(path, fix, map_location=device)
        try:
            self.load_state_dict(saved)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = f"not a checkpoint of this training: {short_reason(exc)}"
            raise DamagedFileError(path, reason, fix) from None
