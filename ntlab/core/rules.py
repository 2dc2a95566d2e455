"""Rules: how one step's per-term losses become the gradients the optimiser applies.

The training loop (`ntlab.core.train.train`) computes one loss per loss term, then asks its
rule to fill the parameters' `.grad`. The static rule is Σ_k ν_k L_k; the methods of
`ntlab.methods` (UW, DWA, GradNorm, the gradient-balancing aggregators, GCS, ARML, …) are
rules too, so every method runs in the same loop on the same batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ntlab.models.multitask import MultiTaskModel


@dataclass
class RuleContext:
    """What a rule may know about its training, given once before the first step."""

    model: MultiTaskModel
    term_names: list[str]  # the target's term first
    term_heads: list[list[int]]  # the heads each term trains
    steps: int  # the training's total budget
    lr: float
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    # Target validation batches (images, labels, heads), for rules that look at held-out
    # target data (Auto-λ); None where the training has none.
    val_batches: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    current_lr: Callable[[], float] | None = None  # the learning rate of the coming step

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)


class Rule:
    """Fills `.grad` of the model's parameters from one step's losses (one per term).

    `backward` returns the weight each term received this step (for the training log), or
    None where weights do not describe the rule. `features` is the backbone output of all
    terms' batches, concatenated in term order (what gradient-balancing rules differentiate
    through); `batches` are those batches (for rules that evaluate the losses elsewhere).
    `step` counts the steps taken before this one.
    """

    def backward(
        self, losses: list[torch.Tensor], features: torch.Tensor, step: int, batches: list
    ) -> torch.Tensor | None:
        raise NotImplementedError


class WeightedSum(Rule):
    """The static rule Σ_k ν_k L_k (Eq. 1, STL, EW, ForkMerge's branches)."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights

    def backward(self, losses, features, step, batches):
        (torch.stack(losses) @ self.weights).backward()
        return self.weights


def shared_params(model: MultiTaskModel) -> list[torch.nn.Parameter]:
    """The parameters every task shares (the backbone's)."""
    return [p for p in model.backbone.parameters() if p.requires_grad]


def task_jacobian(losses: list[torch.Tensor], features: torch.Tensor, model: MultiTaskModel):
    """Per-term gradients on the shared parameters as one (K, P) matrix, with TorchJD's
    `mtl_backward` (one batched backward through the backbone). Each head's `.grad` gets
    the plain gradient of the losses it appears in (weight 1), as in TorchJD."""
    from torchjd.autojac import mtl_backward

    shared = shared_params(model)
    mtl_backward(losses, features=features, shared_params=shared)
    jac = torch.cat([p.jac.reshape(len(losses), -1) for p in shared], dim=1)
    for p in shared:
        del p.jac
    return jac


def set_shared_grad(model: MultiTaskModel, vector: torch.Tensor) -> None:
    """Write a flat gradient vector into the shared parameters' `.grad`."""
    offset = 0
    for p in shared_params(model):
        n = p.numel()
        g = vector[offset : offset + n].view_as(p)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n


def scale_head_grads(model: MultiTaskModel, term_heads: list[list[int]], weights) -> None:
    """Give each term's heads the term's weight: `task_jacobian` left them at weight 1."""
    for heads, w in zip(term_heads, weights):
        w = float(w)
        if w == 1.0:
            continue
        for h in heads:
            for p in model.heads[h].parameters():
                if p.grad is not None:
                    p.grad.mul_(w)
