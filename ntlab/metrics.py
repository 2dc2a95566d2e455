"""Metrics shared by every command: accuracy, TG, GCS, CSD and the transfer regime."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ntlab.errors import NtlabError


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


# ---------------------------------------------------------------------------------------------
# Transfer regimes that respect seed noise (Defs. 3.2/3.3)
#
# An *entry* is one λ of a sweep, one auxiliary domain of a pairwise row, or one method of a
# comparison, with one TG per seed. With n ≥ 2 seeds it helps when its mean TG is above
# twice the seeds' sample standard deviation (ddof = 1), hurts when it is below minus twice,
# and is within noise otherwise. mean > 2·std is |t| = |mean| / (std / √n) > 2√n with n − 1
# degrees of freedom; the two-sided p of that threshold (Student's t):
#
#     seeds n   2      3      4      5      10
#     t >       2.83   3.46   4.00   4.47   6.32
#     p ≈       0.22   0.074  0.028  0.011  0.00014
#
# So the rule is loose with 2 seeds and strict with many: it asks the effect to be twice the
# spread of one seed's TG, not twice the standard error of the mean. Identical seeds (std 0)
# are beyond noise when their mean is not 0: nothing was measured to explain the difference
# away. TG = 0 never helps or hurts (Defs. 3.2/3.3 are strict inequalities). With one seed
# there is no noise estimate: the sign decides, TG = 0 is neutral, and the basis says so.

HELPS, HURTS, WITHIN_NOISE = "helps", "hurts", "within_noise"
EFFECTS = (HELPS, HURTS, WITHIN_NOISE)
REGIMES = ("positive", "weak_negative", "strong_negative", "neutral")
NOISE_STDS = 2.0  # an entry clears the seed noise when |mean| > NOISE_STDS · std

REGIME_LABELS = {
    "positive": "positive",
    "weak_negative": "weak negative",
    "strong_negative": "strong negative",
    "neutral": "neutral (within noise)",
}
EFFECT_LABELS = {HELPS: "positive", HURTS: "negative", WITHIN_NOISE: "neutral (within noise)"}


def gain_effect(tgs: Iterable[float]) -> str:
    """`helps`, `hurts` or `within_noise`: one entry's per-seed TGs against their seed noise."""
    values = [float(v) for v in tgs]
    if not values:
        raise ValueError("an effect needs at least one transfer gain")
    if not all(math.isfinite(v) for v in values):
        raise NtlabError(
            f"a transfer gain is not a finite number ({', '.join(f'{v:g}' for v in values)}): "
            "a training diverged; lower --lr or check the run's training curves"
        )
    mean = sum(values) / len(values)
    noise = NOISE_STDS * statistics.stdev(values) if len(values) > 1 else 0.0
    if mean > noise:
        return HELPS
    if mean < -noise:
        return HURTS
    return WITHIN_NOISE


def regime_of_effects(effects: Iterable[str]) -> str:
    """Defs. 3.2/3.3 on entries that cleared the noise: `positive` (some help, none hurts),
    `weak_negative` (some help, some hurt), `strong_negative` (some hurt, none helps),
    `neutral` (none helps or hurts beyond noise)."""
    found = set(effects)
    if not found:
        raise ValueError("the transfer regime needs at least one transfer gain")
    helps, hurts = HELPS in found, HURTS in found
    if helps:
        return "weak_negative" if hurts else "positive"
    return "strong_negative" if hurts else "neutral"


def two_sided_p(seeds: int) -> float:
    """The two-sided p of the rule's threshold |t| > 2√n (Student's t, n − 1 dof)."""
    if seeds < 2:
        raise ValueError("a p-value needs at least two seeds")
    from scipy.special import stdtr  # scipy comes with scikit-learn; imported when needed

    return float(2 * stdtr(seeds - 1, -NOISE_STDS * math.sqrt(seeds)))


def seeds_text(counts: Iterable[int]) -> str:
    lo, hi = min(counts), max(counts)
    n = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return f"{n} seed{'' if hi == 1 else 's'}"


def regime_basis(counts: Iterable[int]) -> str:
    """What the regime rests on: the seed count, and whether there was a noise estimate."""
    counts = list(counts)
    if max(counts) == 1:
        return "1 seed (no noise estimate)"
    basis = f"{seeds_text(counts)} (mean beyond {NOISE_STDS:g} seed std)"
    return basis if min(counts) > 1 else basis + "; entries with 1 seed by sign"


def regime_rule(seeds: int) -> str:
    """The criterion, in words, for results.json and reports."""
    tail = (
        "TG = 0 never helps or hurts. Regime: positive (some help, none hurts), weak negative "
        "(some help, some hurt), strong negative (some hurt, none helps), neutral (none helps "
        "or hurts)."
    )
    if seeds < 2:
        return f"One seed, no noise estimate: TG > 0 helps, TG < 0 hurts. {tail}"
    t = NOISE_STDS * math.sqrt(seeds)
    return (
        f"Over {seeds} seeds an entry helps when its mean TG is above {NOISE_STDS:g}× the "
        f"seeds' sample std (ddof 1) and hurts when below −{NOISE_STDS:g}×, i.e. |t| > "
        f"{t:.2f} with {seeds - 1} dof, two-sided p ≈ {two_sided_p(seeds):.2g}; identical "
        f"seeds (std 0) count when the mean is not 0. {tail}"
    )


def rule_caption(seeds: int) -> str:
    """The criterion in one short line, for the tables a command prints."""
    if seeds < 2:
        return "1 seed, no noise estimate: helps if TG > 0, hurts if TG < 0"
    t = NOISE_STDS * math.sqrt(seeds)
    return (
        f"helps/hurts: |mean TG| > {NOISE_STDS:g} seed std ({seeds} seeds: |t| > {t:.2f}, "
        f"two-sided p ≈ {two_sided_p(seeds):.2g}); otherwise within noise"
    )


def _shown(value: str, labels: dict, neutral: str, seeds: int | None) -> str:
    """`labels[value]`, with `(1 seed)` where there was no noise estimate."""
    if value not in labels:
        return value
    if seeds == 1:
        return f"{'neutral' if value == neutral else labels[value]} (1 seed)"
    return labels[value]


def regime_label(regime: str, seeds: int | None = None) -> str:
    """The regime as shown to people; `(1 seed)` where there was no noise estimate."""
    return _shown(regime, REGIME_LABELS, "neutral", seeds)


def effect_label(effect: str, seeds: int | None = None) -> str:
    """One entry's effect as shown to people: positive, negative or neutral (within noise)."""
    return _shown(effect, EFFECT_LABELS, WITHIN_NOISE, seeds)


@dataclass(frozen=True)
class Regime:
    """A target's regime over its entries, each entry's effect, and the seeds it rests on."""

    regime: str
    effects: dict[str, str]
    seeds: tuple[int, ...]  # seed count of each entry

    @property
    def basis(self) -> str:
        return regime_basis(self.seeds)

    @property
    def rule(self) -> str:
        return regime_rule(min(self.seeds))

    @property
    def label(self) -> str:
        return regime_label(self.regime, max(self.seeds))

    def fields(self) -> dict[str, str]:
        """The regime with what it rests on, for results.json."""
        return {"regime": self.regime, "regime_basis": self.basis, "regime_rule": self.rule}


def regime_of_seeds(tgs: Mapping[Any, Iterable[float]]) -> Regime:
    """The regime of entries (λ, auxiliary domains, methods), each with its per-seed TGs."""
    values = {str(key): [float(v) for v in seeds] for key, seeds in tgs.items()}
    if not values:
        raise ValueError("the transfer regime needs at least one transfer gain")
    effects = {key: gain_effect(v) for key, v in values.items()}
    return Regime(
        regime_of_effects(effects.values()),
        effects,
        tuple(len(v) for v in values.values()),
    )


def transfer_regime(tgs_by_lam: Mapping[float, Iterable[float]]) -> Regime:
    """Defs. 3.2/3.3 over a grid of λ > 0 with one TG per seed (λ = 0 entries are ignored)."""
    values = {f"{lam:g}": tgs for lam, tgs in tgs_by_lam.items() if lam > 0}
    if not values:
        raise ValueError("the transfer regime needs at least one λ > 0")
    return regime_of_seeds(values)


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
