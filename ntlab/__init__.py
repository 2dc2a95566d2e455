"""ntlab: negative transfer in auxiliary-task learning, task-weight sweeps, and ForkMerge.

The Python API (`ntlab.api`): `ntlab.Task`, `ntlab.train`, `ntlab.forkmerge`, `ntlab.gcs`,
`ntlab.sweep`; bad arguments raise `ntlab.NtlabError`; `ntlab.metrics` has `accuracy`,
`transfer_gain` and `delta_m`. They load on first use (the command line stays fast).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["NtlabError", "Result", "Task", "forkmerge", "gcs", "metrics", "sweep", "train"]


def __getattr__(name: str) -> Any:
    if name == "NtlabError":
        from ntlab.errors import NtlabError

        return NtlabError
    if name == "metrics":
        import importlib

        return importlib.import_module("ntlab.metrics")
    if name in __all__:
        from ntlab import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
