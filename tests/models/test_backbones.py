"""One contract over every registered backbone and method (timm-style)."""

import pytest
import torch

from ntlab.errors import NtlabError, UnknownNameError
from ntlab.methods import METHODS, get_method
from ntlab.models import BACKBONES, MultiTaskModel
from ntlab.models.backbones import load_weights
from ntlab.tasks import segmentation_task

DENSE = ("fcn", "resnet50-dilated")  # feature maps; their heads upsample to the input
TABULAR = ("esmm", "mmoe")  # rows of categorical indices and numericals; towers of their own
TABULAR_INPUTS = {"categorical": [5] * 16, "numerical": 63}


def build(name: str, **kwargs):
    if name in TABULAR:
        return BACKBONES.get(name)(width=4, inputs=TABULAR_INPUTS, input_shape=(79,), **kwargs)
    return BACKBONES.get(name)(image_size=16, **kwargs)


def test_tabular_backbone_contract():
    from ntlab.ctr import ctcvr_task, ctr_task

    for name in TABULAR:
        torch.manual_seed(0)
        backbone = build(name)
        model = MultiTaskModel(backbone, {"a": ctr_task(), "b": ctcvr_task()}, (79,))
        x = torch.cat([torch.randint(0, 5, (4, 16)).float(), torch.randn(4, 63)], 1)
        feats = model.features(x)
        assert feats.shape == (4, backbone.out_features)
        out = model.logits(feats, 0), model.logits(feats, 1)
        assert out[0].shape == (4, 1) and out[1].shape == (4, 2)
        (out[0].sum() + out[1].sum()).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", [n for n in BACKBONES.names() if n not in TABULAR])
def test_backbone_contract(name):
    torch.manual_seed(0)
    backbone = build(name)
    dense = name in DENSE
    tasks = {"a": segmentation_task(10), "b": segmentation_task(7)} if dense else {"a": 10, "b": 7}
    model = MultiTaskModel(backbone, tasks, (3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    feats = model.features(x)
    if dense:
        assert feats.shape[:2] == (4, backbone.out_features) and callable(backbone.dense_head)
        assert model.logits(feats, 1).shape == (4, 7, 16, 16)
    else:
        assert feats.shape == (4, backbone.out_features)
        assert model.logits(feats, 1).shape == (4, 7)
    loss = model.logits(feats, 0).logsumexp(1).mean() + model.logits(feats, 1).logsumexp(1).mean()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", BACKBONES.names())
def test_local_weights_round_trip_and_mismatch(name, tmp_path):
    torch.manual_seed(1)
    source = build(name)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    loaded = build(name, weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(NtlabError, match="does not match the backbone"):
        build(name, weights=path)


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


def test_a_torchvision_imagenet_checkpoint_loads_without_its_classifier(tmp_path):
    """The format torchvision publishes: the whole classifier model's state dict, fc included."""
    from torchvision.models import resnet18

    torch.manual_seed(2)
    full = resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(full.state_dict(), path)
    backbone = BACKBONES.get("resnet18")(weights=path)
    assert isinstance(backbone.fc, torch.nn.Identity)
    assert torch.equal(backbone.conv1.weight, full.conv1.weight)
    assert torch.equal(backbone.layer4[1].bn2.running_var, full.layer4[1].bn2.running_var)


def test_a_checkpoint_of_another_architecture_names_the_first_mismatch(tmp_path):
    from torchvision.models import resnet50

    path = tmp_path / "resnet50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    with pytest.raises(NtlabError) as err:
        BACKBONES.get("resnet18")(weights=path)
    text = str(err.value)
    assert "does not match the backbone" in text and "layer1.0.conv1.weight" in text
    assert "(64, 64, 1, 1)" in text and "(64, 64, 3, 3)" in text
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(NtlabError, match="cannot read weights file"):
        BACKBONES.get("resnet18")(weights=path)


def test_the_backbone_learning_rate_scale_makes_two_groups():
    from ntlab.core.state import OptimConfig, build_optimizer

    model = MultiTaskModel(BACKBONES.get("cnn")(image_size=16), {"a": 3})
    opt = build_optimizer(model, OptimConfig("sgd", 0.01, 5e-4, backbone_lr_scale=0.1))
    backbone, heads = opt.param_groups
    assert backbone["lr"] == pytest.approx(0.001) and heads["lr"] == pytest.approx(0.01)
    assert backbone["nesterov"] and backbone["momentum"] == 0.9
    assert backbone["weight_decay"] == 5e-4
    assert len(backbone["params"]) == len(list(model.backbone.parameters()))
    assert len(heads["params"]) == 2
    single = build_optimizer(model, OptimConfig("sgd", 0.01))
    assert len(single.param_groups) == 1
