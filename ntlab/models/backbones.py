"""Backbones: a feature extractor with an `out_features` attribute, built by name."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ntlab.errors import NtlabError, torch_load_reason
from ntlab.registry import Registry

BACKBONES: Registry = Registry("backbone")


class SmallCNN(nn.Sequential):
    """3 × [conv3×3 → GroupNorm → ReLU → maxpool] then flatten: fast on 2 CPU cores.

    GroupNorm, not BatchNorm: with per-task batches BatchNorm would mix domains in its
    running statistics, an artificial source of negative transfer.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, image_size: int = 16) -> None:
        chans = [in_channels, width, 2 * width, 2 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans, chans[1:]):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.GroupNorm(min(8, c_out), c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        layers.append(nn.Flatten())
        super().__init__(*layers)
        self.out_features = chans[-1] * (image_size // 8) ** 2


@BACKBONES.register("cnn")
def small_cnn(
    image_size: int = 16,
    width: int = 16,
    weights: Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    **_: object,
) -> nn.Module:
    """The default backbone (~16k parameters at width 16 and 16×16 images); as many input
    channels as the images have (3 where the shape is not given)."""
    if image_size < 8:
        raise NtlabError(f"the cnn backbone needs images of at least 8×8, got {image_size}")
    if input_shape is not None and len(input_shape) < 3:
        raise NtlabError(
            f"the cnn backbone needs images [C, H, W]; these inputs are {list(input_shape)}"
        )
    channels = int(input_shape[-3]) if input_shape else 3
    model = SmallCNN(in_channels=channels, width=width, image_size=image_size)
    if weights is not None:
        load_weights(model, weights)
    return model


def _torchvision_backbone(
    name: str, out_features: int, head: str, weights: Path | None, **kwargs: object
) -> nn.Module:
    """torchvision's `name`, built without weights (never downloaded), then a local
    state-dict file loaded (its classifier `head` ignored), then the classifier removed."""
    import torchvision.models as tvm

    shape = kwargs.pop("input_shape", None)
    if shape is not None and (len(shape) < 3 or shape[-3] != 3):
        raise NtlabError(
            f"{name} takes RGB images [3, H, W]; these inputs are {list(shape)} "
            "(for grey images use --backbone cnn or wrn-28-2)"
        )
    model = getattr(tvm, name)(weights=None, **kwargs)
    if weights is not None:
        load_weights(model, weights, ignore_prefixes=(f"{head}.",))
    parent, _, attr = head.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    model.out_features = out_features
    return model


@BACKBONES.register("resnet18")
def resnet18(weights: Path | None = None, input_shape=None, **_: object) -> nn.Module:
    """torchvision's ResNet-18 (512 features); `weights` is a local state-dict file."""
    return _torchvision_backbone("resnet18", 512, "fc", weights, input_shape=input_shape)


@BACKBONES.register("resnet50")
def resnet50(weights: Path | None = None, input_shape=None, **_: object) -> nn.Module:
    """torchvision's ResNet-50 (2048 features): the paper's DomainNet backbone."""
    return _torchvision_backbone("resnet50", 2048, "fc", weights, input_shape=input_shape)


@BACKBONES.register("resnet101")
def resnet101(weights: Path | None = None, input_shape=None, **_: object) -> nn.Module:
    """torchvision's ResNet-101 (2048 features)."""
    return _torchvision_backbone("resnet101", 2048, "fc", weights, input_shape=input_shape)


@BACKBONES.register("vit_b_16")
def vit_b_16(weights: Path | None = None, image_size: int = 224, **_: object) -> nn.Module:
    """torchvision's ViT-B/16 (768 features); images must be a multiple of 16 pixels."""
    if image_size % 16:
        raise NtlabError(f"vit_b_16 needs --image-size a multiple of 16, got {image_size}")
    return _torchvision_backbone("vit_b_16", 768, "heads.head", weights, image_size=image_size)


class _WideBlock(nn.Module):
    """A pre-activation wide residual block: BN → ReLU → conv3×3 (stride) → BN → ReLU →
    conv3×3, plus the input (through a 1×1 conv where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = torch.relu(self.bn1(x))
        y = self.conv2(torch.relu(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Sequential):
    """WRN-depth-k (Zagoruyko & Komodakis, 2016): a 3×3 conv to 16 channels, three groups of
    (depth − 4)/6 wide blocks at 16k, 32k and 64k channels (strides 1, 2, 2), BN → ReLU →
    global average pooling. WRN-28-2 (1.5 M parameters, 128 features) is S4L's and the
    paper's semi-supervised backbone."""

    def __init__(self, depth: int = 28, k: int = 2, in_channels: int = 3) -> None:
        if (depth - 4) % 6:
            raise NtlabError(f"a wide ResNet's depth is 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * k, 32 * k, 64 * k]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        for group, stride in zip(range(3), (1, 2, 2)):
            c_in, c_out = widths[group], widths[group + 1]
            layers += [_WideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                       for i in range(n)]  # fmt: skip
        layers += [nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.out_features = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@BACKBONES.register("wrn-28-2")
def wrn_28_2(
    weights: Path | None = None, input_shape: tuple[int, ...] | None = None, **_: object
) -> nn.Module:
    """WRN-28-2 (128 features), as many input channels as the images have; the paper's
    backbone for the semi-supervised benchmark (`ssl`)."""
    if input_shape is not None and len(input_shape) < 3:
        raise NtlabError(f"wrn-28-2 needs images [C, H, W]; these inputs are {list(input_shape)}")
    model = WideResNet(28, 2, int(input_shape[-3]) if input_shape else 3)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: Path, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local state dict; a missing or mismatching file is a clear error, never a download."""
    path = Path(path)
    if not path.is_file():
        raise NtlabError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise NtlabError(
            f"cannot read weights file {path}: {torch_load_reason(path, exc)}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NtlabError(f"weights file {path} is not a state dict (name → tensor)")
    state = {k: v for k, v in state.items() if not str(k).startswith(ignore_prefixes)}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise NtlabError(
            f"weights file {path} does not match the backbone: {wrong[0]} has shape "
            f"{tuple(state[wrong[0]].shape)}, the backbone expects {tuple(own[wrong[0]].shape)}"
            f"{f' ({len(wrong)} tensors differ)' if len(wrong) > 1 else ''}"
        )
    result = model.load_state_dict(state, strict=False)
    expected = {k for k in model.state_dict() if not k.startswith(ignore_prefixes)}
    if result.unexpected_keys or set(result.missing_keys) & expected:
        raise NtlabError(
            f"weights file {path} does not match the backbone "
            f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected keys, "
            f"e.g. {(result.missing_keys + result.unexpected_keys)[0]!r})"
        )


# --- fully-convolutional backbones for dense tasks (ntlab.models.dense) -------------------


def _register_dense() -> None:
    """`fcn` and `resnet50-dilated`: each returns a feature map and carries the head its
    dense tasks get by default (`dense_head(in_channels, out_channels, (H, W))`)."""
    from ntlab.models.dense import DENSE_BACKBONES, DENSE_HEADS

    for name, factory in DENSE_BACKBONES.items():

        def build(
            image_size: int = 32,
            width: int = 16,
            weights: Path | None = None,
            input_shape: tuple[int, ...] | None = None,
            factory=factory,
            head=DENSE_HEADS[name],
            **_: object,
        ) -> nn.Module:
            sides = tuple(input_shape[-2:]) if input_shape else image_size
            model = factory(image_size=sides, width=width, weights=weights)
            model.dense_head = head
            return model

        build.__doc__ = factory.__doc__
        BACKBONES.register(name)(build)


_register_dense()


# --- tabular backbones for the recommendation benchmarks (ntlab.models.tabular) -----------


def _register_tabular() -> None:
    """`esmm` and `mmoe`: embeddings of categorical and numerical columns; each carries the
    towers its tasks get (`task_head(outputs)`)."""
    from ntlab.catalog import TABULAR_BACKBONES
    from ntlab.models.tabular import build_tabular

    for name in TABULAR_BACKBONES:

        def build(name=name, **kwargs: object) -> nn.Module:
            return build_tabular(name, **kwargs)

        build.__doc__ = build_tabular.__doc__
        BACKBONES.register(name)(build)


_register_tabular()
