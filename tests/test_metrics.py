import math

import pytest
import torch
from sklearn.metrics import accuracy_score

from ntlab.metrics import (
    accuracy,
    confidence_score_discrepancy,
    gradient_cosine,
    transfer_gain,
    transfer_regime,
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


@pytest.mark.parametrize(
    ("tg", "regime"),
    [
        ({0.0: 0.0, 0.25: 1.0, 1.0: 0.5}, "positive"),
        ({0.25: 0.8, 1.0: -1.2}, "weak_negative"),
        ({0.0: 0.0, 0.25: -0.1, 1.0: -2.0}, "strong_negative"),
        ({0.25: 0.0, 1.0: -0.5}, "strong_negative"),  # no λ helps
        ({0.25: 0.3, 1.0: 0.0}, "positive"),  # some help, none hurts
    ],
)
def test_transfer_regime_follows_definitions_3_2_and_3_3(tg, regime):
    assert transfer_regime(tg) == regime


def test_transfer_regime_needs_a_positive_lambda():
    with pytest.raises(ValueError):
        transfer_regime({0.0: 0.0})
