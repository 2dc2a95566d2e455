import math

import pytest
import torch
from sklearn.metrics import accuracy_score

from ntlab.errors import NtlabError
from ntlab.metrics import (
    HELPS,
    HURTS,
    REGIME_LABELS,
    WITHIN_NOISE,
    accuracy,
    confidence_score_discrepancy,
    effect_label,
    gain_effect,
    gradient_cosine,
    regime_label,
    regime_of_effects,
    regime_of_seeds,
    regime_rule,
    transfer_gain,
    transfer_regime,
    two_sided_p,
)


def test_accuracy_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=g)
    y = torch.randint(10, (200,), generator=g)
    ref = accuracy_score(y.numpy(), logits.argmax(1).numpy()) * 100
    assert accuracy(logits, y) == pytest.approx(ref)


def test_transfer_gain_is_method_minus_stl():
    assert transfer_gain(75.5, 74.0) == pytest.approx(1.5)
    assert transfer_gain(70.0, 74.0) == pytest.approx(-4.0)


def test_gradient_cosine_matches_a_hand_computed_example():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[-1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # ⟨a,b⟩ = 2, ‖a‖ = √14, ‖b‖ = √2 → 2/√28; then 1/√2; a zero gradient gives 0.
    expected = torch.tensor([2 / 28**0.5, 1 / 2**0.5, 0.0])
    assert torch.allclose(gradient_cosine(a, b), expected)
    assert gradient_cosine(a[0], -a[0]).item() == pytest.approx(-1.0)


def test_csd_matches_a_hand_computed_softmax():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    e = math.e
    confidences = [e**2 / (e**2 + 1), 0.5, e**3 / (e**3 + 1)]
    expected = 1 - sum(confidences) / 3
    assert confidence_score_discrepancy(logits.softmax(1)) == pytest.approx(expected)
    # One-hot predictions are fully confident; uniform ones over 4 classes give 0.75.
    assert confidence_score_discrepancy(torch.eye(3)) == pytest.approx(0.0)
    assert confidence_score_discrepancy(torch.full((5, 4), 0.25)) == pytest.approx(0.75)


# Reference tables of the regime rule: per-seed TGs of one entry (a λ, an auxiliary domain, a
# method) → helps / hurts / within noise. n ≥ 2: helps iff mean > 2·std (ddof 1), strictly.
@pytest.mark.parametrize(
    ("tgs", "effect"),
    [
        ([0.5], HELPS),  # one seed: by the sign
        ([-0.05], HURTS),
        ([0.0], WITHIN_NOISE),  # TG exactly 0 never hurts (Defs. 3.2/3.3 are strict)
        ([0.0, 0.0, 0.0], WITHIN_NOISE),  # a method that returns STL exactly, every seed
        ([0.3, 0.3, 0.3], HELPS),  # identical seeds, mean ≠ 0: beyond (nil) seed noise
        ([-0.05, -0.05], HURTS),
        # n = 2: mean > 2·std ⇔ b > (2√2 − 1)/(2√2 + 1) ≈ 0.4776 for the seeds (1, b)
        ([1.0, 0.48], HELPS),
        ([1.0, 0.47], WITHIN_NOISE),
        ([-1.0, -0.48], HURTS),
        ([-1.0, -0.47], WITHIN_NOISE),
        # n = 3: (1, 2, 3) has mean 2 = 2·std exactly: not beyond; a shift of 0.01 is
        ([1.0, 2.0, 3.0], WITHIN_NOISE),
        ([1.01, 2.01, 3.01], HELPS),
        ([-1.0, -2.0, -3.0], WITHIN_NOISE),
        ([-1.01, -2.01, -3.01], HURTS),
        # README sweep cells (3 seeds, as mean ± std): mnist λ = 1/16 and λ = 1, optdigits λ = 1/2
        ([0.20 - 0.09, 0.20, 0.20 + 0.09], HELPS),
        ([-0.58 - 0.23, -0.58, -0.58 + 0.23], HURTS),
        ([0.59 - 0.41, 0.59, 0.59 + 0.41], WITHIN_NOISE),
        ([2.0, -1.0], WITHIN_NOISE),  # signs disagree
    ],
)
def test_gain_effect_reference_values(tgs, effect):
    assert gain_effect(tgs) == effect


@pytest.mark.parametrize("seeds", [2, 3, 4, 5, 10])
def test_the_rule_is_a_t_test_at_two_root_n(seeds):
    """mean > 2·std is t > 2√n with n − 1 dof; its two-sided p matches scipy's Student t."""
    from scipy import stats

    assert two_sided_p(seeds) == pytest.approx(2 * stats.t.sf(2 * math.sqrt(seeds), seeds - 1))
    g = torch.Generator().manual_seed(seeds)
    for _ in range(200):
        x = (torch.randn(seeds, generator=g) + torch.rand(1, generator=g) * 3).tolist()
        t = stats.ttest_1samp(x, 0.0).statistic
        assert (gain_effect(x) == HELPS) == (t > 2 * math.sqrt(seeds))
        assert (gain_effect(x) == HURTS) == (t < -2 * math.sqrt(seeds))


def test_stated_p_values():
    assert two_sided_p(3) == pytest.approx(0.0742, abs=5e-4)  # t > 3.46, as stated in README
    assert two_sided_p(2) == pytest.approx(0.216, abs=5e-4)
    assert "3.46" in regime_rule(3) and "p ≈ 0.074" in regime_rule(3)
    assert "no noise estimate" in regime_rule(1)


@pytest.mark.parametrize(
    ("effects", "regime"),
    [
        ([HELPS, WITHIN_NOISE], "positive"),
        ([HELPS, HELPS], "positive"),
        ([HELPS, HURTS, WITHIN_NOISE], "weak_negative"),
        ([HURTS, WITHIN_NOISE], "strong_negative"),
        ([HURTS], "strong_negative"),
        ([WITHIN_NOISE, WITHIN_NOISE], "neutral"),
    ],
)
def test_regime_of_effects(effects, regime):
    assert regime_of_effects(effects) == regime


# Three seeds: README's optdigits sweep row, nothing beyond 2 std (λ = 1/16, 1/2, 2) …
OPTDIGITS_SWEEP = {0.0625: [-0.18, -0.04, 0.1], 0.5: [0.18, 0.59, 1.0], 2.0: [-0.67, 0.51, 1.69]}
# … and its mnist row: λ = 1/16 helps, λ = 1 hurts beyond 2 std; λ = 1/8 within noise
MNIST_SWEEP = {0.0625: [0.11, 0.2, 0.29], 0.125: [-0.08, 0.37, 0.82], 1.0: [-0.81, -0.58, -0.35]}


@pytest.mark.parametrize(
    ("tgs", "regime"),
    [
        ({0.0: [0.0], 0.25: [1.0], 1.0: [0.5]}, "positive"),
        ({0.25: [0.8], 1.0: [-1.2]}, "weak_negative"),
        ({0.0: [0.0], 0.25: [-0.1], 1.0: [-2.0]}, "strong_negative"),
        ({0.25: [0.0], 1.0: [-0.5]}, "strong_negative"),  # one hurts, none helps
        ({0.25: [0.3], 1.0: [0.0]}, "positive"),  # TG = 0 does not hurt
        ({0.25: [0.0], 1.0: [0.0]}, "neutral"),  # exactly STL: was "strong_negative"
        ({0.25: [0.0, 0.0, 0.0], 1.0: [0.0, 0.0, 0.0]}, "neutral"),
        (OPTDIGITS_SWEEP, "neutral"),
        (MNIST_SWEEP, "weak_negative"),
        # a mean that helps within noise does not make it weak negative: strong negative
        ({0.125: [-0.3, 0.4, 0.8], 1.0: [-0.81, -0.58, -0.35]}, "strong_negative"),
    ],
)  # fmt: skip
def test_transfer_regime_follows_definitions_3_2_and_3_3_beyond_noise(tgs, regime):
    assert transfer_regime(tgs).regime == regime


def test_one_seed_says_so():
    r = transfer_regime({0.25: [0.8], 1.0: [-1.2]})
    assert r.fields()["regime_basis"] == "1 seed (no noise estimate)"
    assert r.label == "weak negative (1 seed)"
    assert regime_label("neutral", 1) == "neutral (1 seed)"
    three = transfer_regime({0.25: [0.0, 0.0, 0.0]})
    assert three.label == "neutral (within noise)"
    assert three.fields()["regime_basis"] == "3 seeds (mean beyond 2 seed std)"
    assert "p ≈ 0.074" in three.fields()["regime_rule"]
    assert effect_label(HURTS, 3) == "negative"
    assert effect_label(WITHIN_NOISE, 1) == "neutral (1 seed)"


def test_transfer_regime_needs_a_positive_lambda():
    with pytest.raises(ValueError):
        transfer_regime({0.0: [0.0]})


def test_non_finite_gains_are_refused():
    with pytest.raises(NtlabError, match="not a finite number"):
        gain_effect([0.5, float("nan")])


def _readme_cell(text: str) -> tuple[float, float, bool]:
    """`**+1.02 ± 0.30**` → (1.02, 0.30, bold)."""
    bold = text.startswith("**")
    mean, std = text.strip("*").replace("−", "-").split(" ± ")
    return float(mean), float(std), bold


def test_readme_sweep_table_follows_the_rule():
    """The README's sweep table: bold is "beyond twice the seed std", and the regime column is
    the rule applied to its six λ (3 seeds with that mean and std: mean − std, mean, mean + std)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    header = "| target | STL | λ = 1/16 |"
    lines = readme[readme.index(header) :].splitlines()[2:7]
    labels = {v: k for k, v in REGIME_LABELS.items()}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        entries = {}
        for i, text in enumerate([*cells[2:8], *cells[9:11]]):
            mean, std, bold = _readme_cell(text)
            seeds = [mean - std, mean, mean + std]
            assert (gain_effect(seeds) != WITHIN_NOISE) == bold, (cells[0], text)
            if i < 6:
                entries[i] = seeds
        assert regime_of_seeds(entries).regime == labels[cells[8]], cells[0]
