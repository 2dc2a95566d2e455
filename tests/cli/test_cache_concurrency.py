"""Two real `python -m ntlab` processes started together on one empty NTLAB_HOME: every
training they share is trained by one of them, the other waits and reads it, both report
the same numbers, and the cache ends with one valid entry per key and nothing else."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ntlab import cache
from tests.cache_home import private_home

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["--target", "optdigits", "--aux", "mnist", "--eval-every", "10", "--batch-size", "16",
         "--threads", "1"]  # fmt: skip


@pytest.fixture
def home(tiny_digits, tmp_path, monkeypatch):
    return private_home(monkeypatch, tmp_path)


def together(home: Path, cwd: Path, *commands: list[str]) -> list[subprocess.CompletedProcess]:
    """Start every command at once, then wait for all of them."""
    env = {**os.environ, "NTLAB_HOME": str(home), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "COLUMNS": "200"}  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ntlab", *map(str, args)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for args in commands
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)  # a guard against hangs on a loaded machine
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    for result in done:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    return done


def cache_entries(home: Path) -> dict[str, list[str]]:
    """The keys stored per kind; asserts each entry reads and that no lock, temporary
    folder or damaged entry is left."""
    kinds = {}
    for kind_dir in sorted((home / "cache").iterdir()):
        names = sorted(p.name for p in kind_dir.iterdir())
        assert kind_dir.name != cache.BROKEN, names
        assert not [n for n in names if n.startswith(".")], names  # locks, temporary folders
        for name in names:
            assert cache.check_entry(kind_dir / name) is None
        kinds[kind_dir.name] = names
    return kinds


def test_two_trains_at_once_train_each_training_once(home, tmp_path):
    # 120 steps: the trainings of both processes overlap even if one starts a second late
    train = ["train", "--method", "ew", *SHORT, "--steps", "120"]
    a, b = tmp_path / "a", tmp_path / "b"
    runs = together(home, tmp_path, [*train, "--out", a], [*train, "--out", b])
    first, second = (json.loads((p / "results.json").read_text()) for p in (a, b))
    # exactly one process trained EW and the STL baseline, the other read both
    assert sorted(r.pop("source") for r in (first, second)) == ["cache", "run"]
    assert sorted(r["stl"].pop("source") for r in (first, second)) == ["cache", "run"]
    for r in (first, second):
        r.pop("duration_s")  # the run's own wall time
    assert first == second  # the same numbers, per-image results included
    said = [r.stdout.count("ew → optdigits: from cache") for r in runs]
    assert sorted(said) == [0, 1]
    assert sum(r.stdout.count("stl → optdigits: from cache") for r in runs) == 1
    assert len(cache_entries(home)["runs"]) == 2  # EW and STL, one valid entry each
    # both run directories hold the same curves and a loadable model
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    assert (a / "model.pt").is_file() and (b / "model.pt").is_file()


def sweep_rows(folder: Path) -> list[dict]:
    with (folder / "sweep.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_two_sweeps_at_once_train_each_of_their_cells_once(home, tmp_path):
    """λ = 0 (STL), λ = 1 and ForkMerge: three trainings both sweeps need."""
    sweep = ["sweep", *SHORT, "--steps", "20", "--lams", "0,1", "--seeds", "0", "--with-forkmerge",
             "--forkmerge-branches", "joint", "--merge-every", "10"]  # fmt: skip
    runs = together(
        home, tmp_path, [*sweep, "--out", tmp_path / "a"], [*sweep, "--out", tmp_path / "b"]
    )
    first, second = sweep_rows(tmp_path / "a"), sweep_rows(tmp_path / "b")
    assert [(r["method"], r["lam"]) for r in first] == [
        ("fixed", "0.0"), ("fixed", "1.0"), ("forkmerge", ""),
    ]  # fmt: skip
    for one, other in zip(first, second, strict=True):
        assert sorted([one.pop("source"), other.pop("source")]) == ["cache", "run"]
        assert one == other
    kinds = cache_entries(home)
    assert (len(kinds["runs"]), len(kinds["forkmerge"])) == (2, 1)  # STL and λ = 1; ForkMerge
    assert not any("took over" in r.stdout + r.stderr for r in runs)  # no owner died


def test_two_pairwise_runs_at_once_train_their_shared_cells_once(home, tmp_path):
    """Two pairwise runs over the same two domains: 2 EW cells and 2 STL baselines, each
    trained by one process and read by the other."""
    pairwise = ["pairwise", "--domains", "optdigits,mnist", "--method", "ew", "--steps", "60",
                "--eval-every", "30", "--batch-size", "16", "--threads", "1"]  # fmt: skip
    runs = together(
        home, tmp_path, [*pairwise, "--out", tmp_path / "a"], [*pairwise, "--out", tmp_path / "b"]
    )
    tables = []
    for name in ("a", "b"):
        with (tmp_path / name / "pairwise.csv").open(newline="") as f:
            tables.append(list(csv.DictReader(f)))
    for one, other in zip(*tables, strict=True):
        one.pop("source"), other.pop("source")
        assert one == other
    said = sum(r.stdout.count(": from cache") for r in runs)
    assert said >= 4  # every one of the 4 trainings was read by one of the two processes
    assert len(cache_entries(home)["runs"]) == 4  # 2 EW cells, 2 STL runs: one entry each
