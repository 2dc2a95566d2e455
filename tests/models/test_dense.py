"""Dense backbones and heads: shapes at the input size, gradients, weights files, determinism."""

import pytest
import torch
import torch.nn.functional as F

from ntlab.errors import NtlabError
from ntlab.models.dense import (
    DENSE_BACKBONES,
    DENSE_HEADS,
    aspp_head,
    conv_head,
    dense_cnn,
    dilated_resnet50,
    upsample_bilinear,
)

SCENES_TASKS = {"segment": 11, "depth": 1, "normal": 3}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return dilated_resnet50().eval()


@pytest.mark.parametrize("size", [(32, 32), (36, 48)])
def test_fcn_maps_at_its_output_stride_and_heads_at_the_input_size(size):
    backbone = dense_cnn(image_size=size, width=8)
    features = backbone(torch.rand(2, 3, *size))
    s = backbone.output_stride
    assert features.shape == (2, backbone.out_features, size[0] // s, size[1] // s)
    for task, channels in SCENES_TASKS.items():
        assert conv_head(backbone.out_features, channels, size)(features).shape == (
            2,
            channels,
            *size,
        ), task


@pytest.mark.parametrize("size", [(30, 32), (32, 33)])
def test_fcn_refuses_sides_not_divisible_by_its_stride(size):
    with pytest.raises(NtlabError, match=rf"divisible by 4, got {size[0]}×{size[1]}"):
        dense_cnn(image_size=size)


def test_each_head_sends_gradients_to_every_backbone_parameter():
    torch.manual_seed(0)
    backbone = dense_cnn(image_size=32, width=8)
    heads = {t: conv_head(backbone.out_features, c, (32, 32)) for t, c in SCENES_TASKS.items()}
    x = torch.rand(4, 3, 32, 32)
    for task, head in heads.items():
        backbone.zero_grad(set_to_none=True)
        head(backbone(x)).square().mean().backward()
        for name, p in backbone.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (task, name)
            assert torch.isfinite(p.grad).all(), (task, name)


def test_aspp_head_on_the_dilated_resnet50_gives_the_input_size(resnet):
    x = torch.rand(1, 3, 36, 48)
    head = aspp_head(resnet.out_features, 13, (36, 48)).eval()
    with torch.no_grad():
        features = resnet(x)
        out = head(features)
    assert resnet.output_stride == 8 and resnet.out_features == 2048
    assert features.shape == (1, 2048, 5, 6)  # ceil(36 / 8) × 48 / 8
    assert out.shape == (1, 13, 36, 48) and torch.isfinite(out).all()


def test_aspp_head_sends_gradients_to_its_input_and_parameters():
    torch.manual_seed(0)
    head = aspp_head(64, 3, (24, 24))
    rates = [branch[0].dilation for branch in head.body[0].convs[1:4]]
    assert rates == [(12, 12), (24, 24), (36, 36)]
    features = torch.rand(2, 64, 3, 3, requires_grad=True)
    head(features).square().mean().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_the_dilated_resnet50_uses_torchvisions_dilation_and_passes_gradients():
    torch.manual_seed(0)
    backbone = dilated_resnet50()
    assert backbone.layer4[0].conv2.dilation == (2, 2)
    assert backbone.layer4[1].conv2.dilation == (4, 4)
    assert not hasattr(backbone, "fc") and not hasattr(backbone, "avgpool")
    head = aspp_head(backbone.out_features, 1, (32, 32))
    head(backbone(torch.rand(2, 3, 32, 32))).mean().backward()
    assert backbone.conv1.weight.grad is not None and backbone.conv1.weight.grad.abs().sum() > 0


def test_the_upsample_is_bilinear_interpolation():
    torch.manual_seed(0)
    for (h, w), size in [((8, 8), (32, 32)), ((5, 6), (36, 48)), ((36, 48), (288, 384))]:
        x = torch.randn(2, 3, h, w)
        expected = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(upsample_bilinear(x, size), expected)


def test_a_head_first_used_under_inference_mode_still_trains():
    head = conv_head(16, 2, (20, 28))
    features = torch.rand(2, 16, 5, 7)
    with torch.inference_mode():
        head(features)
    head(features).mean().backward()
    assert head.body[0].weight.grad is not None


def test_the_heads_size_attribute_sets_the_output_size():
    head = conv_head(16, 2, (16, 16))
    head.size = (24, 32)
    assert head(torch.rand(1, 16, 6, 8)).shape == (1, 2, 24, 32)


def test_fcn_weights_round_trip_and_a_wrong_file_is_named(tmp_path):
    torch.manual_seed(3)
    source = dense_cnn(width=8)
    path = tmp_path / "fcn.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(4)
    loaded = dense_cnn(width=8, weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(NtlabError, match=rf"weights file {path} does not match the backbone"):
        dense_cnn(width=16, weights=path)
    wrong = tmp_path / "notes.txt"
    wrong.write_text("not a checkpoint")
    with pytest.raises(NtlabError, match=rf"cannot read weights file {wrong}"):
        dense_cnn(width=8, weights=wrong)
    with pytest.raises(NtlabError, match=rf"weights file {tmp_path / 'gone.pt'} does not exist"):
        dense_cnn(width=8, weights=tmp_path / "gone.pt")


def test_a_torchvision_resnet50_checkpoint_loads_into_the_dilated_backbone(resnet, tmp_path):
    """Dilation changes no shapes: the ImageNet ResNet-50 file, fc included, loads as it is."""
    from torchvision.models import resnet50

    torch.manual_seed(5)
    full = resnet50(weights=None)
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(full.state_dict(), path)
    backbone = dilated_resnet50(weights=path)
    for key, value in full.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(backbone.state_dict()[key], value), key
    torch.save(resnet.state_dict(), path)  # the backbone's own file round-trips too
    assert torch.equal(
        dilated_resnet50(weights=path).layer4[2].conv3.weight, resnet.layer4[2].conv3.weight
    )
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(NtlabError, match=rf"weights file {path} does not match the backbone"):
        dilated_resnet50(weights=path)


def test_the_same_seed_builds_the_same_model_and_outputs():
    x = torch.rand(2, 3, 32, 32)

    def build():
        torch.manual_seed(7)
        backbone = dense_cnn(width=8)
        return backbone, conv_head(backbone.out_features, 11, (32, 32))

    (b1, h1), (b2, h2) = build(), build()
    for (k, v1), v2 in zip(b1.state_dict().items(), b2.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert torch.equal(h1(b1(x)), h2(b2(x)))
    torch.manual_seed(8)
    assert not torch.equal(dense_cnn(width=8)[0][0].weight, b1[0][0].weight)


def test_every_dense_backbone_has_a_default_head_and_the_backbone_signature():
    assert set(DENSE_HEADS) == set(DENSE_BACKBONES)
    backbone = DENSE_BACKBONES["fcn"](image_size=16, width=4, weights=None, lr_scale=1.0)
    assert backbone.out_features == 8
    out = DENSE_HEADS["fcn"](backbone.out_features, 3, (16, 16))(backbone(torch.rand(1, 3, 16, 16)))
    assert out.shape == (1, 3, 16, 16)
