"""`benchmarks/gpu_speed.py --device cpu --small` runs unattended in the suite: every part of
the GPU benchmark (STL, ForkMerge sequential and concurrent, the merge search's share,
resnet fp32 vs bf16 + channels-last, the loader) on the CPU, and prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_small_on_the_cpu(tmp_path):
    out = tmp_path / "speed.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/gpu_speed.py", "--device", "cpu", "--small",
         "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout
    for row in (
        "STL steps/s, digits cnn, batch 64, eager",
        "ForkMerge, 3 per-task branches, sequential / STL",
        "ForkMerge, 3 per-task branches, concurrent / STL",
        "merge search / ForkMerge wall time",
        "bf16 + channels-last / fp32",
        "loader images/s by processes, cpu decoding",
        "loader, GPU decoding | not measured (no CUDA device)",
    ):
        assert row in table, table
    figures = json.loads(out.read_text())
    assert figures["stl"]["eager"]["steps_per_s"] > 0
    for mode in ("sequential", "concurrent"):
        assert 0 < figures["forkmerge"][mode]["search_share"] < 1
    assert set(figures["loader"]["cpu"]["images_per_s"]) == {"0", "1"}
    assert figures["resnet"]["speedup"] > 0
