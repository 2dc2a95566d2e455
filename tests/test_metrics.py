import pytest
import torch
from sklearn.metrics import accuracy_score

from ntlab.metrics import accuracy, transfer_gain


def test_accuracy_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=g)
    y = torch.randint(10, (200,), generator=g)
    ref = accuracy_score(y.numpy(), logits.argmax(1).numpy()) * 100
    assert accuracy(logits, y) == pytest.approx(ref)


def test_transfer_gain_is_method_minus_stl():
    assert transfer_gain(75.5, 74.0) == pytest.approx(1.5)
    assert transfer_gain(70.0, 74.0) == pytest.approx(-4.0)
