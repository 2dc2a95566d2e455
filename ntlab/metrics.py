"""Metrics shared by every command."""

from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percentage points."""
    return (logits.argmax(1) == y).float().mean().item() * 100


def transfer_gain(p_method: float, p_stl: float) -> float:
    """Eq. 2: TG = P(θ_A) − P(θ_STL), in the units of P (here accuracy points)."""
    return p_method - p_stl
