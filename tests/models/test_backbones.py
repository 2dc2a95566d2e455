"""One contract over every registered backbone and method (timm-style)."""

import pytest
import torch

from ntlab.errors import NtlabError, UnknownNameError
from ntlab.methods import METHODS, get_method
from ntlab.models import BACKBONES, MultiTaskModel
from ntlab.models.backbones import load_weights


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_contract(name):
    torch.manual_seed(0)
    backbone = BACKBONES.get(name)(image_size=16)
    model = MultiTaskModel(backbone, {"a": 10, "b": 7})
    x = torch.randn(4, 3, 16, 16)
    feats = model.features(x)
    assert feats.shape == (4, backbone.out_features)
    assert model.logits(feats, 1).shape == (4, 7)
    loss = model.logits(feats, 0).logsumexp(1).mean() + model.logits(feats, 1).logsumexp(1).mean()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", BACKBONES.names())
def test_local_weights_round_trip_and_mismatch(name, tmp_path):
    torch.manual_seed(1)
    source = BACKBONES.get(name)(image_size=16)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    loaded = BACKBONES.get(name)(image_size=16, weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(NtlabError, match="does not match the backbone"):
        BACKBONES.get(name)(image_size=16, weights=path)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(NtlabError, match="does not exist"):
        load_weights(torch.nn.Linear(2, 2), tmp_path / "nope.pt")


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name):
    method = get_method(name)
    terms = method.terms("t", ["a", "b"], lam=0.5)
    assert terms[0].tasks == ("t",) and terms[0].weight == 1.0
    assert all(w.weight >= 0 for w in terms)
    if not method.uses_aux:
        assert len(terms) == 1
    else:
        assert {t for term in terms[1:] for t in term.tasks} == {"a", "b"}


def test_fixed_mixes_the_auxiliary_tasks_into_one_term_of_weight_lambda():
    terms = get_method("fixed").terms("t", ["a", "b"], lam=0.25)
    assert [(t.tasks, t.weight) for t in terms] == [(("t",), 1.0), (("a", "b"), 0.25)]
    ew = get_method("ew").terms("t", ["a", "b"])
    assert [(t.tasks, t.weight) for t in ew] == [(("t",), 1.0), (("a",), 1.0), (("b",), 1.0)]


def test_unknown_names_list_the_choices():
    with pytest.raises(
        UnknownNameError, match="unknown backbone 'vgg'; choose one of: cnn, resnet18"
    ):
        BACKBONES.get("vgg")
