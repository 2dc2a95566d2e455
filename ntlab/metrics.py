"""Metrics shared by every command: accuracy, TG, GCS, CSD and the transfer regime."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

REGIMES = ("positive", "weak_negative", "strong_negative")


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percentage points."""
    return (logits.argmax(1) == y).float().mean().item() * 100


def transfer_gain(p_method: float, p_stl: float) -> float:
    """Eq. 2: TG = P(θ_A) − P(θ_STL), in the units of P (here accuracy points)."""
    return p_method - p_stl


def gradient_cosine(g_a: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
    """Def. 3.4: ⟨g_a, g_b⟩ / (‖g_a‖ ‖g_b‖) along the last dimension (0 where a norm is 0).

    Batched: rows of `g_a` and `g_b` are flattened gradients.
    """
    dot = (g_a * g_b).sum(-1)
    norms = g_a.norm(dim=-1) * g_b.norm(dim=-1)
    return torch.where(norms > 0, dot / norms.clamp_min(torch.finfo(dot.dtype).tiny), 0.0)


def confidence_score_discrepancy(probs: torch.Tensor) -> float:
    """Eq. 4: 1 − mean max-softmax confidence of a model on test data, in [0, 1]."""
    return 1.0 - probs.max(1).values.mean().item()


def transfer_regime(tg_by_lam: Mapping[float, float]) -> str:
    """Defs. 3.2/3.3 over a grid of λ > 0 (λ = 0 entries are ignored).

    `strong_negative`: no λ > 0 helps (max TG ≤ 0); `weak_negative`: some λ helps and some
    hurts; `positive`: some λ helps and none hurts.
    """
    values = [tg for lam, tg in tg_by_lam.items() if lam > 0]
    if not values:
        raise ValueError("the transfer regime needs at least one λ > 0")
    return regime_of_gains(values)


def regime_of_gains(gains: Iterable[float]) -> str:
    """The regime of a set of transfer gains (of several λ, or of several auxiliary tasks)."""
    values = list(gains)
    if not values:
        raise ValueError("the transfer regime needs at least one transfer gain")
    if max(values) <= 0:
        return "strong_negative"
    return "weak_negative" if min(values) < 0 else "positive"


def delta_m(
    method: Mapping[str, Mapping[str, float]],
    base: Mapping[str, Mapping[str, float]],
    lower_is_better: Iterable[tuple[str, str]] = (),
) -> float:
    """Δm in percent (App. C.1): the mean relative change of every metric against the
    baseline `base` (STL), sign-flipped where lower is better; the metrics of one task are
    averaged first, then the tasks. `method[task][metric]` holds the values."""
    lower = set(lower_is_better)
    per_task = []
    for task, metrics in base.items():
        changes = []
        for name, b in metrics.items():
            sign = -1.0 if (task, name) in lower else 1.0
            changes.append(sign * (method[task][name] - b) / b)
        per_task.append(sum(changes) / len(changes))
    return 100.0 * sum(per_task) / len(per_task)
