"""Dense backbones (a feature map, not a vector) and per-task dense heads.

A dense backbone maps images [B, 3, H, W] to a map [B, C, H/s, W/s] and carries
`out_features = C` and `output_stride = s`. A head factory
`(in_channels, out_channels, size) -> nn.Module` maps that map to [B, out_channels, H, W]:
per-pixel logits (segmentation) or values (depth, normals) at the input size.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ntlab.errors import NtlabError
from ntlab.models.backbones import load_weights


def _conv_block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class DenseCNN(nn.Sequential):
    """A small fully-convolutional backbone for the CPU, output stride 4.

    conv3×3/2 (width) → conv3×3 (2·width) → conv3×3/2 → two residual dilated convs
    (dilation 2 and 4, for context at a quarter of the resolution); each conv is followed by
    GroupNorm and ReLU. GroupNorm, not BatchNorm, for the same reason as SmallCNN: per-task
    batches would mix their statistics. Stride 4, not 2: with the dilated convs at half
    resolution a step with three heads cost about twice as much (measured at width 16, 32×32,
    batch 64), and the receptive field (59 pixels, 67 with a conv_head) spans a 32×32 canvas.
    """

    output_stride = 4

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        c = 2 * width
        super().__init__(
            _conv_block(in_channels, width, stride=2),
            _conv_block(width, c),
            _conv_block(c, c, stride=2),
            _Residual(_conv_block(c, c, dilation=2)),
            _Residual(_conv_block(c, c, dilation=4)),
        )
        self.out_features = c


def _image_sides(image_size: int | tuple[int, int]) -> tuple[int, int]:
    sides = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(sides) != 2 or not all(isinstance(s, int) and s > 0 for s in sides):
        raise NtlabError(f"an image size is one or two positive integers, got {image_size!r}")
    return sides  # type: ignore[return-value]


def dense_cnn(
    image_size: int | tuple[int, int] = 32,
    width: int = 16,
    weights: Path | None = None,
    **_: object,
) -> nn.Module:
    """The dense default: DenseCNN (~30k parameters at width 16); sides divisible by 4."""
    height, wide = _image_sides(image_size)
    stride = DenseCNN.output_stride
    if height % stride or wide % stride:
        raise NtlabError(
            f"the fcn backbone needs image sides divisible by {stride}, got {height}×{wide}"
        )
    if width < 1:
        raise NtlabError(f"the fcn backbone needs a width of at least 1, got {width}")
    model = DenseCNN(width=width)
    if weights is not None:
        load_weights(model, weights)
    return model


class DilatedResNet50(nn.Sequential):
    """torchvision's ResNet-50 up to layer4, layers 3 and 4 dilated (output stride 8).

    The children keep torchvision's names (conv1 … layer4), so a torchvision ResNet-50
    state dict loads as it is, its `fc.` ignored.
    """

    output_stride = 8

    def __init__(self) -> None:
        from torchvision.models import resnet50

        net = resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        super().__init__(OrderedDict((name, getattr(net, name)) for name in names))
        self.out_features = 2048


def dilated_resnet50(weights: Path | None = None, **_: object) -> nn.Module:
    """The paper's NYUv2 backbone: a dilated ResNet-50 returning its 2048-channel layer4 map;
    `weights` is a local state-dict file (never downloaded)."""
    model = DilatedResNet50()
    if weights is not None:
        load_weights(model, weights, ignore_prefixes=("fc.",))
    return model


@lru_cache(maxsize=64)
def _linear_interpolation(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype):
    """The [n_out, n_in] matrix of 1-D linear interpolation (align_corners=False).

    Built outside inference mode, so that a matrix first made during an evaluation under
    torch.inference_mode can still be saved for backward in training."""
    with torch.inference_mode(False), torch.no_grad():
        eye = torch.eye(n_in, device=device, dtype=dtype)[None]
        out = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)
        return out[0].T.contiguous()


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """F.interpolate(x, size, mode="bilinear", align_corners=False), as two matmuls.

    Bilinear interpolation is separable: A_h · x · A_wᵀ. On the CPU its forward and
    backward are several times faster than F.interpolate's (whose backward is a scatter),
    the largest cost of a small dense head at 32×32.
    """
    rows = _linear_interpolation(x.shape[-2], size[0], x.device, x.dtype)
    cols = _linear_interpolation(x.shape[-1], size[1], x.device, x.dtype)
    return rows @ x @ cols.T


class DenseHead(nn.Module):
    """`body` on the backbone map, then bilinear upsampling to `size` (the input's H, W).

    `size` is a plain attribute: a model that sees another input size may set it.
    """

    def __init__(self, body: nn.Module, size: tuple[int, int] | int) -> None:
        super().__init__()
        self.body = body
        self.size = _image_sides(size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return upsample_bilinear(self.body(features), self.size)


def conv_head(
    in_channels: int, out_channels: int, size: tuple[int, int], hidden: int | None = None
) -> nn.Module:
    """The light head for DenseCNN: conv3×3 → GroupNorm → ReLU → conv1×1, upsampled."""
    hidden = hidden or in_channels
    body = nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, hidden), hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 1),
    )
    return DenseHead(body, size)


def aspp_head(in_channels: int, out_channels: int, size: tuple[int, int]) -> nn.Module:
    """The paper's NYUv2 head: torchvision's DeepLabV3 head (ASPP, rates 12/24/36), upsampled.

    It keeps torchvision's BatchNorm (the tasks share their images, so no domains mix); its
    image-pooling branch normalises a 1×1 map, so training needs batches of two or more.
    """
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead

    return DenseHead(DeepLabHead(in_channels, out_channels, atrous_rates=(12, 24, 36)), size)


DENSE_BACKBONES = {"fcn": dense_cnn, "resnet50-dilated": dilated_resnet50}
DENSE_HEADS = {"fcn": conv_head, "resnet50-dilated": aspp_head}
