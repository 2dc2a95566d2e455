"""Named option bundles (`--preset`): built-in defaults < preset < --config file < command line."""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    # A smoke-test budget: seconds per training on 2 CPU cores.
    "quick": {
        "steps": 300,
        "batch_size": 64,
        "lr": 1e-3,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "schedule": "cosine",
        "backbone_lr_scale": 1.0,
        "eval_every": 100,
        "merge_every": 75,
        "batches": 32,
    },
    # The budget the benchmark's calibration (README) was measured with.
    "default": {
        "steps": 500,
        "batch_size": 64,
        "lr": 1e-3,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "schedule": "cosine",
        "backbone_lr_scale": 1.0,
        "eval_every": 100,
        "merge_every": 125,
        "batches": 64,
    },
    # The paper's DomainNet settings : SGD nesterov 0.9, wd 5e-4, lr 0.01 with the
    # backbone at ×0.1, cosine, batch 48, 50K iterations, Δt = 12.5K; 25K pretraining steps
    # and 200 batches for Fig. 2.
    "paper": {
        "steps": 50_000,
        "pretrain_steps": 25_000,
        "batch_size": 48,
        "lr": 0.01,
        "optimizer": "sgd",
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "backbone_lr_scale": 0.1,
        "eval_every": 2_500,
        "merge_every": 12_500,
        "batches": 200,
    },
}
ALIASES = {"pretrain_steps": "steps"}  # an option that falls back to another preset key
DEFAULT_PRESET = "default"


def preset_value(preset: str, name: str) -> object | None:
    values = PRESETS[preset]
    if name in values:
        return values[name]
    return values.get(ALIASES.get(name, ""))
