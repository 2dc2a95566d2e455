"""Speed on an accelerator: mixed precision, channels-last images and compiled backbones.

Three fields of `TrainConfig` decide them:

- `precision` (fp32 | bf16 | fp16): the forward passes of training and evaluation run under
  `torch.autocast` in that dtype; parameters, gradients, optimiser moments and merges stay
  fp32. fp16 adds a gradient scaler (`TrainState.scaler`). Methods whose rule reads
  gradients (`ntlab.catalog.FP32_METHODS`: the Jacobian aggregators, GradNorm, the
  auxiliary-task methods) train in fp32 whatever the option says, and so do the gradient
  measurements (gcs, affinity), which never enter autocast.
- `memory_format` (auto | contiguous | channels-last): the layout of the backbone's
  4-D weights and inputs. `auto` is channels-last for torchvision's ResNets on CUDA and
  contiguous everywhere else.
- `compile` (off | default | reduce-overhead | captured): the backbone's training forward
  (and so its backward) goes through `torch.compile` with static shapes; evaluation stays
  eager, so validation chunks of other sizes compile nothing. A fork of a compiled model
  compiles nothing either: the compiled graph is keyed by the backbone's code and shapes,
  not by the instance, so ForkMerge's branches, rounds and merge candidates reuse it.
  `captured` records the whole step as one CUDA graph instead (`ntlab.core.captured`).

`resolved_speed(cfg)` is what config.json and the cache key record: the settings as the
training really runs them on its device.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch

from ntlab.catalog import FP32_METHODS

if TYPE_CHECKING:
    from ntlab.config import TrainConfig
    from ntlab.models.multitask import MultiTaskModel

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHANNELS_LAST_BACKBONES = ("resnet18", "resnet50", "resnet101", "resnet50-dilated")


def effective_precision(precision: str, method: str) -> str:
    """The precision a training of `method` runs in (fp32 for methods that read gradients)."""
    return "fp32" if method in FP32_METHODS else precision


def effective_memory_format(memory_format: str, device_type: str, backbone: str) -> str:
    """`auto` → channels-last for the ResNets on CUDA, contiguous otherwise."""
    if memory_format != "auto":
        return memory_format
    if device_type == "cuda" and backbone in CHANNELS_LAST_BACKBONES:
        return "channels-last"
    return "contiguous"


def resolved_speed(cfg: TrainConfig) -> dict:
    """`precision` and `memory_format` of `cfg` as its training runs them."""
    from ntlab.config import resolve_device

    device = resolve_device(cfg.device).type
    return {
        "precision": effective_precision(cfg.precision, cfg.method),
        "memory_format": effective_memory_format(cfg.memory_format, device, cfg.backbone),
    }


def configure(
    model: MultiTaskModel, precision: str, memory_format: str, compile_mode: str = "off"
) -> MultiTaskModel:
    """Set the model's precision, layout and compile mode (in place); returns the model."""
    model.precision = precision
    model.compile_mode = compile_mode
    model.channels_last = memory_format == "channels-last"
    if model.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def autocast(device: torch.device, precision: str, cache: bool = True):
    """The autocast context of `precision` on `device` (nothing for fp32); `cache=False`
    inside a captured CUDA graph."""
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (None for fp32 and bf16, whose range needs none)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def compiled(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    """`module` through torch.compile in `mode` (static shapes: one graph per batch shape)."""
    return torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)
