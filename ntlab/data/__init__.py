"""Benchmarks and their data.

The package imports nothing heavy until a name is asked for (`ntlab --help` must not pay
for torch): `BENCHMARKS`, `get_benchmark`, `TaskData`, `Benchmark` and `SPLITS` load the
benchmarks (which register themselves) on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BENCHMARKS", "SPLITS", "Benchmark", "TaskData", "get_benchmark"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ntlab.data import benchmark, digits, imagelist  # noqa: F401, I001  (registers them)
    from ntlab.data import dense  # noqa: F401  (after them: `data list` shows digits first)
    from ntlab.data import ssl  # noqa: F401
    from ntlab.data import markets  # noqa: F401  (the tabular benchmarks, last)

    return getattr(benchmark, name)
