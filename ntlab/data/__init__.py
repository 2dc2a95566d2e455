"""Benchmarks and their data."""

from ntlab.data import digits as _digits  # noqa: F401  (registers the benchmark)
from ntlab.data import imagelist as _imagelist  # noqa: F401  (registers domainnet, imagelist)
from ntlab.data.benchmark import BENCHMARKS, SPLITS, Benchmark, TaskData, get_benchmark

__all__ = ["BENCHMARKS", "SPLITS", "Benchmark", "TaskData", "get_benchmark"]
