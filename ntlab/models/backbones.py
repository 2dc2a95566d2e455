"""Backbones: a feature extractor with an `out_features` attribute, built by name."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ntlab.errors import NtlabError
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
    image_size: int = 16, width: int = 16, weights: Path | None = None, **_: object
) -> nn.Module:
    """The default backbone (~16k parameters at width 16 and 16×16 images)."""
    if image_size < 8:
        raise NtlabError(f"the cnn backbone needs images of at least 8×8, got {image_size}")
    model = SmallCNN(width=width, image_size=image_size)
    if weights is not None:
        load_weights(model, weights)
    return model


@BACKBONES.register("resnet18")
def resnet18(weights: Path | None = None, **_: object) -> nn.Module:
    """torchvision's ResNet-18 without its classifier; `weights` is a local state-dict file."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None)
    if weights is not None:
        load_weights(model, weights, ignore_prefixes=("fc.",))
    model.fc = nn.Identity()
    model.out_features = 512
    return model


def load_weights(model: nn.Module, path: Path, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local state dict; a missing or mismatching file is a clear error, never a download."""
    path = Path(path)
    if not path.is_file():
        raise NtlabError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise NtlabError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    result = model.load_state_dict(state, strict=False)
    expected = {k for k in model.state_dict() if not k.startswith(ignore_prefixes)}
    if result.unexpected_keys or set(result.missing_keys) & expected:
        raise NtlabError(
            f"weights file {path} does not match the backbone "
            f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected keys)"
        )
