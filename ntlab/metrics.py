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


def transfer_gain(p_method: float, p_stl: float, higher_is_better: bool = True) -> float:
    """Eq. 2: TG = P(θ_A) − P(θ_STL), in the units of P (accuracy points, mIoU points, …);
    for a metric where lower is better (an error), TG = P(θ_STL) − P(θ_A), so that a
    positive TG always means the auxiliary tasks helped."""
    return p_method - p_stl if higher_is_better else p_stl - p_method


def gain(method: Mapping[str, Any], stl: Mapping[str, Any], split: str = "test") -> float:
    """TG of two results (their `val_score` / `test_score`, the target's primary metric)
    in the direction the results record (`higher_is_better`, default true)."""
    higher = higher_is_better(method) and higher_is_better(stl)
    return transfer_gain(float(method[f"{split}_score"]), float(stl[f"{split}_score"]), higher)


def higher_is_better(results: Mapping[str, Any]) -> bool:
    """Whether a result's primary metric improves upwards (results before ntlab recorded
    it were accuracies: yes)."""
    return bool(results.get("higher_is_better", True))


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
# The noise of one TG measured with one seed: the test-set sampling error
#
# TG = P(A) − P(B) of two models measured on the same n test images. With n10 the images A
# gets right and B wrong and n01 the reverse, TG = (n10 − n01)/n, and its paired standard
# error (the one of McNemar's comparison: only the images on which the models disagree vary)
# is sqrt(n10 + n01 − (n10 − n01)²/n)/n. Two models trained from the same start on the same
# data agree on most images, so this is far smaller than the unpaired binomial error
# sqrt(pA(1 − pA)/n + pB(1 − pB)/n), which is used only where a run did not keep which test
# images it got right (results written before this was recorded).

#
# A primary metric other than accuracy (mIoU, a depth error, …) is not a mean of per-image
# outcomes, so it has no such formula; each run also measures it on the FOLDS disjoint parts
# of its test set (`ntlab.tasks.fold_ids`: seeded, the same for every model). The TG of two
# models on fold g, d_g, is then a paired difference on the same images, and
# SE(TG) = sd(d_1..d_G)/√G (the standard error of the mean of G fold differences; for a
# metric that is nearly linear in its per-image parts, the full-set TG ≈ their mean).

SE_PAIRED, SE_BINOMIAL, SE_FOLDS = "paired", "binomial", "folds"


def pack_correct(correct: torch.Tensor) -> dict[str, Any]:
    """Which test images a model got right, compactly for results.json: the count and the
    booleans packed 8 to a byte, base64 (2,000 images: 336 characters)."""
    import base64

    import numpy as np

    flags = correct.detach().to("cpu", torch.bool).numpy()
    return {"n": int(flags.size), "bits": base64.b64encode(np.packbits(flags)).decode("ascii")}


def unpack_correct(packed: Any) -> torch.Tensor | None:
    """The booleans of `pack_correct`, or None where `packed` is absent or not of that form
    (a tensor of booleans, as evaluation returns them, is passed through)."""
    import base64
    import binascii

    import numpy as np

    if isinstance(packed, torch.Tensor):
        return packed.detach().to("cpu", torch.bool).reshape(-1)
    if not isinstance(packed, dict) or not isinstance(packed.get("n"), int):
        return None
    try:
        raw = np.frombuffer(base64.b64decode(packed.get("bits", ""), validate=True), np.uint8)
    except (binascii.Error, TypeError, ValueError):
        return None
    n = packed["n"]
    if raw.size != (n + 7) // 8:
        return None
    return torch.from_numpy(np.unpackbits(raw)[:n].astype(bool))


def paired_tg_se(correct_a: torch.Tensor, correct_b: torch.Tensor) -> tuple[float, float]:
    """(TG, its paired standard error), both in points, of model A over model B from which of
    the same test images each got right."""
    if correct_a.shape != correct_b.shape or correct_a.numel() == 0:
        raise ValueError("a paired comparison needs the same, non-empty set of test images")
    n = correct_a.numel()
    a, b = correct_a.bool(), correct_b.bool()
    n10 = int((a & ~b).sum())
    n01 = int((~a & b).sum())
    return 100.0 * (n10 - n01) / n, paired_se(n10, n01, n)


def paired_se(n10: int, n01: int, n: int) -> float:
    """sqrt(n10 + n01 − (n10 − n01)²/n)/n in points: the standard error of the difference of
    two accuracies on the same n images (n10: right by A only, n01: right by B only)."""
    return 100.0 * math.sqrt(max(n10 + n01 - (n10 - n01) ** 2 / n, 0.0)) / n


def binomial_se(p_a: float, p_b: float, n: int) -> float:
    """sqrt(pA(1 − pA)/n + pB(1 − pB)/n) in points (pA, pB in points): two accuracies as if
    measured on independent test sets of n images each — the fallback without the pairing."""
    a, b = p_a / 100.0, p_b / 100.0
    return 100.0 * math.sqrt(max(a * (1 - a), 0.0) / n + max(b * (1 - b), 0.0) / n)


def fold_se(folds_a: list[float], folds_b: list[float]) -> float:
    """sd(d_g)/√G of the per-fold differences d_g = a_g − b_g (ddof 1; see above)."""
    if len(folds_a) != len(folds_b) or len(folds_a) < 2:
        raise ValueError("a fold SE needs the same folds, at least two, for both models")
    diffs = [float(a) - float(b) for a, b in zip(folds_a, folds_b)]
    return statistics.stdev(diffs) / math.sqrt(len(diffs))


def tg_noise(method: Mapping[str, Any], stl: Mapping[str, Any]) -> dict[str, Any]:
    """TG on test of `method` over `stl` (two results with `test_score`) with its test-set
    standard error: `tg`, `tg_se`, `tg_se_kind` ("paired" where both kept `test_correct` on
    the same images, "folds" where both kept `test_folds`, else "binomial" where the
    test-set size is known and the metric is an accuracy, else no SE: None)."""
    tg = gain(method, stl)
    a, b = unpack_correct(method.get("test_correct")), unpack_correct(stl.get("test_correct"))
    if a is not None and b is not None and a.shape == b.shape and a.numel():
        return {"tg": tg, "tg_se": paired_tg_se(a, b)[1], "tg_se_kind": SE_PAIRED}
    fa, fb = method.get("test_folds"), stl.get("test_folds")
    if isinstance(fa, list) and isinstance(fb, list) and len(fa) == len(fb) >= 2:
        return {"tg": tg, "tg_se": fold_se(fa, fb), "tg_se_kind": SE_FOLDS}
    if method.get("metric", "acc") != "acc":
        return {"tg": tg, "tg_se": None, "tg_se_kind": None}
    n = images_measured(method) or images_measured(stl)
    if n:
        p_a, p_b = float(method["test_score"]), float(stl["test_score"])
        return {"tg": tg, "tg_se": binomial_se(p_a, p_b, n), "tg_se_kind": SE_BINOMIAL}
    return {"tg": tg, "tg_se": None, "tg_se_kind": None}


def images_measured(results: Mapping[str, Any]) -> int | None:
    """The number of test images a result was measured on, where it says."""
    packed = results.get("test_correct")
    if isinstance(packed, torch.Tensor) and packed.numel():
        return int(packed.numel())
    if isinstance(packed, dict) and isinstance(packed.get("n"), int) and packed["n"] > 0:
        return packed["n"]
    n = results.get("test_n")
    return n if isinstance(n, int) and n > 0 else None


# ---------------------------------------------------------------------------------------------
# Transfer regimes that respect noise (Defs. 3.2/3.3)
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
# away. With one seed the noise is the test-set sampling error above: the entry helps when
# TG > 2·SE, hurts when TG < −2·SE (≈ a two-sided z-test at p ≈ 0.046), and is within noise
# otherwise. TG = 0 never helps or hurts (Defs. 3.2/3.3 are strict inequalities), so two
# models with identical predictions (TG 0, SE 0) are within noise.

HELPS, HURTS, WITHIN_NOISE = "helps", "hurts", "within_noise"
EFFECTS = (HELPS, HURTS, WITHIN_NOISE)
REGIMES = ("positive", "weak_negative", "strong_negative", "neutral")
NOISE_STDS = 2.0  # an entry clears the noise when |mean| > NOISE_STDS · std (or · SE)

REGIME_LABELS = {
    "positive": "positive",
    "weak_negative": "weak negative",
    "strong_negative": "strong negative",
    "neutral": "neutral (within noise)",
}
EFFECT_LABELS = {HELPS: "helps", HURTS: "hurts", WITHIN_NOISE: "within noise"}


def _finite(values: list[float]) -> None:
    if not all(math.isfinite(v) for v in values):
        raise NtlabError(
            f"a transfer gain is not a finite number ({', '.join(f'{v:g}' for v in values)}): "
            "a training diverged; lower --lr or check the run's training curves"
        )


def gain_effect(tgs: Iterable[float], se: float | None = None) -> str:
    """`helps`, `hurts` or `within_noise`: one entry's per-seed TGs against their noise — the
    seed std with n ≥ 2 seeds, the test-set standard error `se` of the TG with one seed."""
    values = [float(v) for v in tgs]
    if not values:
        raise ValueError("an effect needs at least one transfer gain")
    _finite(values)
    mean = sum(values) / len(values)
    if len(values) > 1:
        noise = NOISE_STDS * statistics.stdev(values)
    elif se is None or not math.isfinite(float(se)):
        raise NtlabError(
            f"a transfer gain from one seed ({mean:+.2f}) has no test-set standard error, so "
            "it cannot be called helps, hurts or within noise; run the command again (the "
            "cached trainings record it now) or give several seeds"
        )
    else:
        noise = NOISE_STDS * float(se)
    if mean > noise:
        return HELPS
    if mean < -noise:
        return HURTS
    return WITHIN_NOISE


def gain_fields(tgs: Iterable[float], se: float | None = None, se_kind: str | None = None) -> dict:
    """One entry's TG for results.json: `tg` (the seed mean), its noise (`tg_se` and
    `tg_se_kind` for one seed, `tg_std` for several), `seeds` and `effect`."""
    values = [float(v) for v in tgs]
    effect = gain_effect(values, se)
    if len(values) == 1:
        return {"tg": values[0], "tg_se": float(se), "tg_se_kind": se_kind, "seeds": 1,
                "effect": effect}  # fmt: skip
    return {"tg": sum(values) / len(values), "tg_std": statistics.stdev(values),
            "seeds": len(values), "effect": effect}  # fmt: skip


def entry_fields(
    tgs: Iterable[float], ses: Iterable[Any] | None = None, kinds: Iterable[Any] | None = None
) -> dict:
    """`gain_fields` of one entry from its per-seed TGs with each seed's test-set SE and its
    kind (only a single seed's are used; NaN or missing SEs are none)."""
    values = [float(v) for v in tgs]
    se_list = list(ses) if ses is not None else []
    kind_list = list(kinds) if kinds is not None else []
    se = se_list[0] if len(values) == 1 and se_list else None
    se = float(se) if isinstance(se, int | float) and math.isfinite(se) else None
    kind = kind_list[0] if len(values) == 1 and kind_list else None
    return gain_fields(values, se, kind if isinstance(kind, str) else None)


def stat_view(stat: Mapping[str, Any], effect: str | None = None) -> dict:
    """An entry's TG as results.json summaries keep it (`mean`, `std`, `seeds`, `se`,
    `se_kind`, `effect`) in the form of `gain_fields`, for `tg_text` and `tg_sentence`."""
    return {
        "tg": stat["mean"],
        "tg_std": stat.get("std"),
        "tg_se": stat.get("se"),
        "tg_se_kind": stat.get("se_kind"),
        "seeds": int(stat.get("seeds") or 1),
        "effect": effect if effect is not None else stat.get("effect"),
    }


def noise_of(fields: Mapping[str, Any]) -> float | None:
    """The ± of an entry's TG: its seed std (several seeds) or its test-set SE (one seed)."""
    value = fields.get("tg_std") if fields.get("seeds", 1) > 1 else fields.get("tg_se")
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def noise_words(fields: Mapping[str, Any]) -> str:
    """`beyond noise, 3 seeds` / `within noise, 1 seed, paired test-set SE`."""
    verdict = "within noise" if fields["effect"] == WITHIN_NOISE else "beyond noise"
    seeds = int(fields.get("seeds", 1))
    if seeds > 1:
        return f"{verdict}, {seeds} seeds"
    kind = fields.get("tg_se_kind")
    return f"{verdict}, 1 seed, {kind + ' ' if kind else ''}test-set SE"


def tg_text(fields: Mapping[str, Any], digits: int = 2) -> str:
    """`+2.90 ± 0.60`: an entry's TG with its noise (with more decimals where the noise is
    below 0.01, so that it keeps two significant digits: `-0.0012 ± 0.0004`)."""
    noise = noise_of(fields)
    if noise and noise < 10**-digits:
        digits = 1 - math.floor(math.log10(noise))
    text = f"{fields['tg']:+.{digits}f}"
    return text if noise is None else f"{text} ± {noise:.{digits}f}"


def tg_sentence(subject: str, fields: Mapping[str, Any], metric: str = "acc") -> str:
    """`ForkMerge vs STL on optdigits: +0.12 ± 0.35 points (within noise, 1 seed, paired
    test-set SE)` — the subject then the TG, in words (`metric`: the units it is in)."""
    return f"{subject}: {tg_text(fields)} {metric_units(metric)} ({noise_words(fields)})"


# Which way each metric of ntlab's own tasks improves (True: higher is better), the one
# table the tasks (ntlab.tasks), ntlab.dense_metrics and the reports read; a user's task
# declares its own (TaskSpec.metrics).
METRIC_DIRECTIONS: dict[str, bool] = {
    "acc": True, "error": False, "loss": False, "confidence": True, "csd": False,
    "miou": True, "pixel_acc": True, "abs_err": False, "rel_err": False,
    "mean_angle": False, "median_angle": False,
    "within_11.25": True, "within_22.5": True, "within_30": True,
    "auc": True, "logloss": False, "ctr_auc": True,
}  # fmt: skip


def directions(*names: str) -> dict[str, bool]:
    """{metric: higher is better} of ntlab's own metrics `names`, in that order."""
    return {name: METRIC_DIRECTIONS[name] for name in names}


# How the metrics of ntlab's tasks are shown: name → label; the percentages' TGs are points.
METRIC_LABELS = {
    "acc": "acc", "error": "error", "miou": "mIoU", "pixel_acc": "pixel acc", "abs_err": "abs err",
    "rel_err": "rel err", "mean_angle": "mean angle", "median_angle": "median angle",
    "within_11.25": "≤ 11.25°", "within_22.5": "≤ 22.5°", "within_30": "≤ 30°",
    "auc": "AUC", "logloss": "logloss", "ctr_auc": "CTR AUC",
}  # fmt: skip
PERCENT_METRICS = frozenset({
    "acc", "error", "miou", "pixel_acc", "within_11.25", "within_22.5", "within_30", "auc",
    "ctr_auc",
})  # fmt: skip


def metric_label(metric: str | None) -> str:
    return METRIC_LABELS.get(metric or "acc", metric or "acc")


def metric_units(metric: str | None) -> str:
    """`points` for percentages (accuracy, mIoU, …); else the metric's own units."""
    metric = metric or "acc"
    if metric in PERCENT_METRICS:
        return "points"
    return "degrees" if metric.endswith("_angle") else f"({metric_label(metric)})"


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


ONE_SEED_RULE = f"TG beyond {NOISE_STDS:g} test-set SE (paired)"


def regime_basis(counts: Iterable[int]) -> str:
    """What the regime rests on: the seed count, and the noise each entry had to clear."""
    counts = list(counts)
    if max(counts) == 1:
        return f"1 seed ({ONE_SEED_RULE})"
    basis = f"{seeds_text(counts)} (mean beyond {NOISE_STDS:g} seed std)"
    return basis if min(counts) > 1 else basis + f"; entries with 1 seed: {ONE_SEED_RULE}"


def regime_rule(seeds: int) -> str:
    """The criterion, in words, for results.json and reports."""
    tail = (
        "TG = 0 never helps or hurts. Regime: positive (some help, none hurts), weak negative "
        "(some help, some hurt), strong negative (some hurt, none helps), neutral (none helps "
        "or hurts)."
    )
    one = (
        f"an entry helps when its TG is above {NOISE_STDS:g}× its test-set standard error and "
        f"hurts when below −{NOISE_STDS:g}×; the SE is the paired one of two accuracies on "
        "the same test images, sqrt(n10 + n01 − (n10 − n01)²/n)/n with n10 (n01) the images "
        "only the method (only STL) gets right (the binomial SE of two independent "
        "accuracies where a run did not keep its per-image results)"
    )
    if seeds < 2:
        return f"One seed: {one}. {tail}"
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
        return (
            f"1 seed: helps/hurts if |TG| > {NOISE_STDS:g} × its test-set SE "
            "(± is that SE); otherwise within noise"
        )
    t = NOISE_STDS * math.sqrt(seeds)
    return (
        f"helps/hurts: |mean TG| > {NOISE_STDS:g} seed std ({seeds} seeds: |t| > {t:.2f}, "
        f"two-sided p ≈ {two_sided_p(seeds):.2g}; ± is the seed std); otherwise within noise"
    )


def regime_label(regime: str, seeds: int | None = None) -> str:
    """The regime as shown to people: positive, weak/strong negative, neutral (within noise).
    (`seeds` is accepted for the callers' sake: every seed count now has a noise estimate.)"""
    return REGIME_LABELS.get(regime, regime)


def effect_label(effect: str, seeds: int | None = None) -> str:
    """One entry's effect as shown to people: helps, hurts or within noise."""
    return EFFECT_LABELS.get(effect, effect)


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


def regime_of_seeds(
    tgs: Mapping[Any, Iterable[float]], ses: Mapping[Any, float | None] | None = None
) -> Regime:
    """The regime of entries (λ, auxiliary domains, methods), each with its per-seed TGs;
    `ses` holds the test-set SE of each entry that has one seed (keys as in `tgs`)."""
    ses = {str(key): se for key, se in (ses or {}).items()}
    values = {str(key): [float(v) for v in seeds] for key, seeds in tgs.items()}
    if not values:
        raise ValueError("the transfer regime needs at least one transfer gain")
    effects = {key: gain_effect(v, ses.get(key)) for key, v in values.items()}
    return Regime(
        regime_of_effects(effects.values()),
        effects,
        tuple(len(v) for v in values.values()),
    )


def transfer_regime(
    tgs_by_lam: Mapping[float, Iterable[float]], ses: Mapping[float, float | None] | None = None
) -> Regime:
    """Defs. 3.2/3.3 over a grid of λ > 0 with one TG per seed (λ = 0 entries are ignored);
    `ses`: the test-set SE of each λ run with one seed."""
    values = {f"{lam:g}": tgs for lam, tgs in tgs_by_lam.items() if lam > 0}
    if not values:
        raise ValueError("the transfer regime needs at least one λ > 0")
    return regime_of_seeds(values, {f"{lam:g}": se for lam, se in (ses or {}).items()})


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


def delta_m_of(method: Mapping[str, Any], stl: Mapping[str, Any]) -> float:
    """Δm in percent of one run over its STL run on test: over the target's metrics that
    Δm averages (`delta_m_over` of the results, each in its direction) where both runs
    recorded them, else the relative change of the primary metric, 100 · TG / |P(STL)|.
    A metric whose STL value is 0 has no relative change and is left out of the mean
    (NaN when nothing is left)."""
    over = stl.get("delta_m_over") or method.get("delta_m_over")
    a = (method.get("target_metrics") or {}).get("test")
    b = (stl.get("target_metrics") or {}).get("test")
    if over and a and b and all(m in a and m in b for m in over):
        kept = [m for m in over if float(b[m]) != 0]
        if not kept:
            return math.nan
        lower = [("target", m) for m in kept if not over[m]]
        pick = {m: float(a[m]) for m in kept}
        base = {m: float(b[m]) for m in kept}
        return delta_m({"target": pick}, {"target": base}, lower)
    base_score = abs(float(stl["test_score"]))
    return 100.0 * gain(method, stl) / base_score if base_score else math.nan
