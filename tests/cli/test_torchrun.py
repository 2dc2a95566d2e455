"""ForkMerge under torchrun: real processes (gloo on the CPU), compared with one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TREE = Path(__file__).resolve().parents[2]
OPTIONS = [
    "--target", "optdigits", "--aux", "mnist,syn", "--branches", "per-task",
    "--batch-size", "16", "--threads", "1", "--preset", "quick", "--no-baselines", "--quiet",
]  # fmt: skip
TABLES = ("merges.csv", "search.csv", "metrics.csv")

pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(TREE), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def single(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ntlab", "forkmerge", "train", *OPTIONS, *args]
    return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)


def torchrun_cmd(args: list[str]) -> list[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    return [*launch, "2", "-m", "ntlab", "forkmerge", "train", *OPTIONS, *args]


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_cmd(args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=600
    )


def numbers(run: Path) -> dict:
    """results.json less what describes the process rather than the training."""
    results = json.loads((run / "results.json").read_text())
    return {k: v for k, v in results.items() if k not in ("duration_s", "environment")}


def assert_same_run(a: Path, b: Path) -> None:
    assert numbers(a) == numbers(b)
    for table in TABLES:
        assert (a / table).read_bytes() == (b / table).read_bytes(), table


def test_two_processes_equal_one_bit_for_bit(tiny_digits, tmp_path):
    args = ["--steps", "24", "--merge-every", "6"]
    one = single([*args, "--out", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr
    two = torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    assert two.returncode == 0, two.stderr
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "status.json").read_text())["state"] == "completed"
    # rank 0 alone wrote the run directory: the same files as the single process's
    files = {p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*")}
    assert files == {p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*")}
    assert numbers(tmp_path / "two")["rounds"] == 4


def test_pruning_under_torchrun_equals_one_process(tiny_digits, tmp_path):
    args = ["--steps", "18", "--merge-every", "6", "--prune", "2"]
    assert single([*args, "--out", str(tmp_path / "one")], tmp_path).returncode == 0
    two = torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    assert two.returncode == 0, two.stderr
    assert_same_run(tmp_path / "one", tmp_path / "two")
    rows = (tmp_path / "two" / "merges.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["0", "0", "0", "1", "1", "2", "2"]  # 3, then 2


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = Path(f"/proc/{p}/task").iterdir()
            kids = [int(c) for t in tasks for c in (t / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        found += kids
        todo += kids
    return found


def rank_pid(launcher: int, rank: int) -> int | None:
    for pid in descendants(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (FileNotFoundError, PermissionError):
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


def test_killed_rank_stops_the_other_with_one_line_then_resume_finishes(tiny_digits, tmp_path):
    args = ["--steps", "600", "--merge-every", "30", "--dist-timeout", "20"]
    out = tmp_path / "two"
    checkpoint = out / "checkpoints" / "forkmerge.pt"
    proc = subprocess.Popen(
        torchrun_cmd([*args, "--out", str(out)]),
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = rank_pid(proc.pid, 1)
        assert checkpoint.is_file() and victim is not None and proc.poll() is None
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        waited = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert waited < 20 + 15, waited  # the survivor stopped within its --dist-timeout
    ours = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1, stderr
    assert "rank" in ours[0] and "rerun with --resume" in ours[0]
    assert not [line for line in stderr.splitlines() if "ntlab" in line and "File " in line]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed"
    assert not (out / "results.json").exists()

    resumed = torchrun([*args, "--out", str(out), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    whole = single([*args, "--out", str(tmp_path / "one")], tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert_same_run(tmp_path / "one", out)
