"""Named option bundles (`--preset`): built-in defaults < preset < --config file < command line."""

from __future__ import annotations

PRESETS: dict[str, dict[str, object]] = {
    # A smoke-test budget: seconds per training on 2 CPU cores.
    "quick": {
        "steps": 300,
        "batch_size": 64,
        "lr": 1e-3,
        "schedule": "cosine",
        "eval_every": 100,
        "merge_every": 75,
    },
    # The budget the benchmark's calibration (README) was measured with.
    "default": {
        "steps": 500,
        "batch_size": 64,
        "lr": 1e-3,
        "schedule": "cosine",
        "eval_every": 100,
        "merge_every": 125,
    },
}
DEFAULT_PRESET = "default"
