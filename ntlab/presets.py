"""Named option bundles (`--preset`): built-in defaults < preset < --config file < command line.

A preset's values that are tied to the budget follow `--steps` (FOLLOW_STEPS): ForkMerge's Δt
is a fraction of the steps (the paper's 12.5K of 50K, a quarter), so `--preset quick
--steps 60` merges every 15 steps; at a preset's own steps the numbers are the preset's
(quick 300 → 75, default 500 → 125, paper 50000 → 12500).
"""

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
        "merge_fraction": 0.25,  # Δt = 75 of 300
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
        "merge_fraction": 0.25,  # Δt = 125 of 500
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
        "merge_fraction": 0.25,  # Δt = 12.5K of 50K
        "batches": 200,
    },
    # The paper's NYUv2 settings (App. C.2, as LibMTL trains it): Adam 1e-4, weight decay
    # 1e-5, batch 8, 200 epochs of the 636 training images (80 batches an epoch: 16K steps),
    # the rate halved at epoch 100, Δt = 10 epochs; the dilated ResNet-50 with ASPP heads.
    "nyuv2-paper": {
        "steps": 16_000,
        "batch_size": 8,
        "lr": 1e-4,
        "optimizer": "adam",
        "weight_decay": 1e-5,
        "schedule": "step",
        "backbone_lr_scale": 1.0,
        "eval_every": 800,
        "merge_fraction": 0.05,  # Δt = 800 steps = 10 epochs of 16K
        "batches": 200,
        "backbone": "resnet50-dilated",
    },
    # The paper's semi-supervised settings (Table 6, as S4L trains it): WRN-28-2, Adam 5e-3,
    # 200K iterations with the rate ×0.2 at 160K, Δt = 10K. The batch size is not given: 64
    # images per loss term, as the other presets.
    "ssl-paper": {
        "steps": 200_000,
        "batch_size": 64,
        "lr": 5e-3,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "schedule": "late-step",
        "backbone_lr_scale": 1.0,
        "eval_every": 10_000,
        "merge_fraction": 0.05,  # Δt = 10K of 200K
        "batches": 200,
        "backbone": "wrn-28-2",
    },
}
ALIASES = {"pretrain_steps": "steps"}  # an option that falls back to another preset key
DEFAULT_PRESET = "default"


# option → (preset key, how the value follows --steps): `fraction` = max(1, round(steps × f));
# `at_most` = min(the preset's value, steps) (a value above the budget says nothing more).
FOLLOW_STEPS = {
    "merge_every": ("merge_fraction", "fraction"),
    "eval_every": ("eval_every", "at_most"),
}


def preset_value(preset: str, name: str, steps: int | None = None) -> object | None:
    """The value `preset` gives option `name`; values tied to the budget follow `steps`
    (default: the preset's own steps)."""
    values = PRESETS[preset]
    if name in FOLLOW_STEPS:
        key, rule = FOLLOW_STEPS[name]
        if key not in values:
            return None
        budget = values.get("steps") if steps is None else steps
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            return values.get(name)  # an invalid --steps is reported on its own
        if rule == "fraction":
            return max(1, int(budget * float(values[key]) + 0.5))
        return min(int(values[key]), budget)
    if name in values:
        return values[name]
    return values.get(ALIASES.get(name, ""))
