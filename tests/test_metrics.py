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
    binomial_se,
    confidence_score_discrepancy,
    effect_label,
    gain_effect,
    gain_fields,
    gradient_cosine,
    pack_correct,
    paired_se,
    paired_tg_se,
    regime_label,
    regime_of_effects,
    regime_of_seeds,
    regime_rule,
    rule_caption,
    tg_noise,
    tg_sentence,
    transfer_gain,
    transfer_regime,
    two_sided_p,
)


def test_scoreuracy_matches_sklearn():
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
    assert "no noise estimate" not in regime_rule(1) + rule_caption(1)
    assert "paired" in regime_rule(1) and "2× its test-set standard error" in regime_rule(1)


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
        ({0.25: [0.0, 0.0, 0.0], 1.0: [0.0, 0.0, 0.0]}, "neutral"),
        (OPTDIGITS_SWEEP, "neutral"),
        (MNIST_SWEEP, "weak_negative"),
        # a mean that helps within noise does not make it weak negative: strong negative
        ({0.125: [-0.3, 0.4, 0.8], 1.0: [-0.81, -0.58, -0.35]}, "strong_negative"),
    ],
)  # fmt: skip
def test_transfer_regime_follows_definitions_3_2_and_3_3_beyond_noise(tgs, regime):
    assert transfer_regime(tgs).regime == regime


# One seed: the test-set SE of TG decides (a paired SE of two accuracies on the same images).
# (TG per seed, its SE) of each λ → regime; SE 0.5: ±1 point is the edge of the noise.
@pytest.mark.parametrize(
    ("tgs", "regime"),
    [
        ({0.0: (0.0, 0.0), 0.25: (1.01, 0.5), 1.0: (0.5, 0.5)}, "positive"),
        ({0.25: (1.2, 0.5), 1.0: (-1.2, 0.5)}, "weak_negative"),
        ({0.25: (-0.1, 0.5), 1.0: (-2.0, 0.5)}, "strong_negative"),
        ({0.25: (1.0, 0.5), 1.0: (-1.0, 0.5)}, "neutral"),  # exactly 2 SE is not beyond
        ({0.25: (0.8, 0.5), 1.0: (-1.2, 0.5)}, "strong_negative"),  # by the sign: weak negative
        ({0.25: (0.0, 0.0), 1.0: (0.0, 0.0)}, "neutral"),  # identical predictions: exactly STL
        ({0.25: (0.05, 0.05), 1.0: (-0.05, 0.05)}, "neutral"),  # one image of 2,000 either way
    ],
)  # fmt: skip
def test_one_seed_regime_is_by_the_test_set_standard_error(tgs, regime):
    r = transfer_regime({lam: [tg] for lam, (tg, _) in tgs.items()},
                        {lam: se for lam, (_, se) in tgs.items()})  # fmt: skip
    assert r.regime == regime
    assert r.fields()["regime_basis"] == "1 seed (TG beyond 2 test-set SE (paired))"
    assert "no noise estimate" not in r.fields()["regime_rule"]


def test_labels_say_helps_hurts_within_noise():
    three = transfer_regime({0.25: [0.0, 0.0, 0.0]})
    assert three.label == "neutral (within noise)"
    assert three.fields()["regime_basis"] == "3 seeds (mean beyond 2 seed std)"
    assert "p ≈ 0.074" in three.fields()["regime_rule"]
    assert regime_label("neutral", 1) == "neutral (within noise)"
    assert [effect_label(e, 1) for e in (HELPS, HURTS, WITHIN_NOISE)] == [
        "helps",
        "hurts",
        "within noise",
    ]


def test_one_seed_without_a_standard_error_is_refused():
    """The sign alone no longer decides: a one-seed TG needs its SE (one clear line)."""
    with pytest.raises(NtlabError, match="no test-set standard error"):
        gain_effect([0.5])


def _correct(pattern: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in pattern])


def test_paired_se_hand_computed():
    """A right on images 0–5, B on 0–3 and 6: n10 = 2 (images 4, 5), n01 = 1 (image 6), n = 10.
    TG = (2 − 1)/10 = +10 points; SE = sqrt(2 + 1 − 1²/10)/10 = sqrt(2.9)/10 = 0.17029 → 17.03."""
    a = _correct("1111110000")
    b = _correct("1111001000")
    tg, se = paired_tg_se(a, b)
    assert tg == pytest.approx(10.0)
    assert se == pytest.approx(100 * math.sqrt(2.9) / 10)
    assert se == pytest.approx(17.029386, abs=1e-5)
    assert paired_se(2, 1, 10) == pytest.approx(se)
    # the binomial SE of the same accuracies (60 %, 50 %, n = 10) ignores the pairing:
    # sqrt(.6·.4/10 + .5·.5/10) = sqrt(0.049) = 0.22136 → 22.14 points
    assert binomial_se(60.0, 50.0, 10) == pytest.approx(22.135944, abs=1e-5)


def test_tg_noise_pairs_by_image_and_falls_back_to_binomial():
    a, b = _correct("1111110000"), _correct("1111001000")
    method = {"test_score": 60.0, "test_correct": pack_correct(a), "test_n": 10}
    stl = {"test_score": 50.0, "test_correct": pack_correct(b), "test_n": 10}
    paired = tg_noise(method, stl)
    assert paired == {"tg": pytest.approx(10.0), "tg_se": pytest.approx(17.029386, abs=1e-5),
                      "tg_se_kind": "paired"}  # fmt: skip
    old = tg_noise(method, {"test_score": 50.0})  # an STL result written before the bits
    assert old["tg_se_kind"] == "binomial"
    assert old["tg_se"] == pytest.approx(22.135944, abs=1e-5)
    assert tg_noise({"test_score": 60.0}, {"test_score": 50.0})["tg_se"] is None


def test_one_image_of_two_thousand_is_within_noise_and_identical_is_never_negative():
    g = torch.Generator().manual_seed(0)
    stl = torch.rand(2000, generator=g) < 0.8
    for flip in (int(torch.nonzero(stl)[0]), int(torch.nonzero(~stl)[0])):  # lose / gain one
        method = stl.clone()
        method[flip] = ~method[flip]
        tg, se = paired_tg_se(method, stl)
        assert abs(tg) == pytest.approx(0.05)
        assert se == pytest.approx(0.05 * math.sqrt(1 - 1 / 2000))  # sqrt(1 − 1/n)/n
        assert gain_effect([tg], se) == WITHIN_NOISE
    tg, se = paired_tg_se(stl, stl.clone())
    assert (tg, se) == (0.0, 0.0)
    fields = gain_fields([tg], se, "paired")
    assert fields["effect"] == WITHIN_NOISE
    assert "negative" not in effect_label(fields["effect"], 1) + regime_label(
        regime_of_seeds({"a": [tg]}, {"a": se}).regime, 1
    )
    assert tg_sentence("ForkMerge vs STL on optdigits", fields) == (
        "ForkMerge vs STL on optdigits: +0.00 ± 0.00 points (within noise, 1 seed, paired "
        "test-set SE)"
    )
    several = gain_fields([2.5, 2.9, 3.3])
    assert tg_sentence("mnist helps mnistm", several) == (
        "mnist helps mnistm: +2.90 ± 0.40 points (beyond noise, 3 seeds)"
    )


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
