"""`--jobs N` and `--executor ray`: many trainings at once, the same numbers as one process,
a killed worker that fails only its training, and the CLI without Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ntlab.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
BUDGET = ["--steps", "20", "--batch-size", "16", "--eval-every", "10", "--threads", "1"]
PAIRWISE = ["pairwise", "--domains", "optdigits,mnist", "--method", "ew,forkmerge",
            "--merge-every", "10", *BUDGET]  # fmt: skip


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def home_with_data(ntlab_home: Path, folder: Path) -> Path:
    """A new NTLAB_HOME holding the session's tiny data and an empty cache."""
    shutil.copytree(ntlab_home / "datasets", folder / "datasets")
    return folder


@pytest.fixture
def fresh(ntlab_home, tiny_digits, tmp_path, monkeypatch):
    """fresh(name): switch to a new NTLAB_HOME with an empty cache."""

    def switch(name: str) -> Path:
        home = home_with_data(ntlab_home, tmp_path / name)
        monkeypatch.setenv("NTLAB_HOME", str(home))
        return home

    return switch


def no_training_here(monkeypatch):
    """After the executor, the command only reads the cache: training in this process fails."""
    import ntlab.core.cache as cache
    import ntlab.core.forkmerge as fm

    def refuse(*args, **kwargs):
        raise AssertionError("the command trained in its own process instead of a worker")

    monkeypatch.setattr(cache, "run_training", refuse)  # what cached_run and trained_model call
    monkeypatch.setattr(fm, "run_forkmerge", refuse)  # what cached_forkmerge calls


def numbers(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns=["source"], errors="ignore")


def test_pairwise_with_two_jobs_equals_one(fresh, tmp_path, monkeypatch):
    fresh("one")
    result = invoke(*PAIRWISE, "--jobs", 1, "--out", tmp_path / "one-run")
    assert result.exit_code == 0, result.output
    fresh("two")
    with monkeypatch.context() as patch:
        no_training_here(patch)
        result = invoke(*PAIRWISE, "--jobs", 2, "--out", tmp_path / "two-run")
    assert result.exit_code == 0, result.output
    one = numbers(tmp_path / "one-run" / "pairwise.csv")
    two = numbers(tmp_path / "two-run" / "pairwise.csv")
    pd.testing.assert_frame_equal(one, two)
    results = json.loads((tmp_path / "two-run" / "results.json").read_text())
    assert results["cells_trained"] == 4  # trained by this command's workers
    # the recorded threads are the ones asked for, not the parallel default
    config = json.loads((tmp_path / "two-run" / "config.json").read_text())
    assert config["train"]["threads"] == 1


def test_sweep_and_compare_with_jobs_read_only_what_the_workers_trained(
    fresh, tmp_path, monkeypatch
):
    sweep = ["sweep", "--target", "optdigits", "--aux", "mnist", "--lams", "0,1",
             "--with-forkmerge", "--merge-every", "10", *BUDGET]  # fmt: skip
    compare = ["compare", "--target", "optdigits", "--aux", "mnist",
               "--methods", "stl,ew,grid-search,forkmerge", "--lams", "0,1",
               "--merge-every", "10", *BUDGET]  # fmt: skip
    csd = ["csd", "--target", "optdigits", "--aux", "mnist", "--lams", "0,1", *BUDGET]
    fresh("serial")
    for name, args in (("sweep", sweep), ("compare", compare), ("csd", csd)):
        result = invoke(*args, "--out", tmp_path / f"{name}-1")
        assert result.exit_code == 0, result.output
    fresh("parallel")
    with monkeypatch.context() as patch:
        no_training_here(patch)
        for name, args in (("sweep", sweep), ("compare", compare), ("csd", csd)):
            result = invoke(*args, "--jobs", 2, "--out", tmp_path / f"{name}-2")
            assert result.exit_code == 0, (name, result.output)
    train = [
        "train",
        "--method",
        "grid-search",
        "--target",
        "optdigits",
        "--aux",
        "mnist",
        *BUDGET,
    ]  # fmt: skip  (the λ grid of compare's grid-search: all in the cache)
    with monkeypatch.context() as patch:
        no_training_here(patch)
        result = invoke(*train, "--jobs", 2, "--out", tmp_path / "train-2")
    assert result.exit_code == 0, result.output
    for name in ("sweep", "compare", "csd"):
        a = numbers(tmp_path / f"{name}-1" / f"{name}.csv")
        b = numbers(tmp_path / f"{name}-2" / f"{name}.csv")
        pd.testing.assert_frame_equal(a, b, obj=name)
    first = pd.read_csv(tmp_path / "sweep-2" / "sweep.csv")
    assert set(first["source"]) == {"run"}  # trained for it, read from the cache


def test_pairwise_on_a_local_ray_equals_one_process(fresh, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ntlab[ray]')")
    import ray

    args = ["pairwise", "--domains", "optdigits,mnist", "--method", "ew", *BUDGET]
    fresh("one")
    assert invoke(*args, "--out", tmp_path / "one").exit_code == 0
    fresh("ray")
    try:
        result = invoke(*args, "--executor", "ray", "--out", tmp_path / "ray")
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(
        numbers(tmp_path / "one" / "pairwise.csv"), numbers(tmp_path / "ray" / "pairwise.csv")
    )


def test_bad_parallel_options_are_one_line_errors(fresh, tmp_path):
    fresh("bad")
    for extra, message in (
        (["--jobs", "0"], "--jobs"),
        (["--executor", "dask"], "'dask' is not one of local, ray"),
        (["--ray-address", "auto"], "--ray-address is for --executor ray"),
    ):
        result = invoke(*PAIRWISE, *extra, "--out", tmp_path / "bad")
        assert result.exit_code == 2, result.output
        assert message in result.output


def ntlab_process(args: list[str], home: Path) -> subprocess.Popen:
    env = {**os.environ, "NTLAB_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "ntlab", *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def workers(pid: int) -> list[int]:
    """The training processes of an ntlab command: children of its forkserver."""
    return [w for child in children(pid) for w in children(child)]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the workers through /proc")
def test_a_killed_worker_fails_one_training_and_resume_completes_the_table(
    ntlab_home, tiny_digits, tmp_path
):
    args = ["pairwise", "--domains", "optdigits,mnist", "--method", "ew", "--steps", "300",
            "--batch-size", "16", "--eval-every", "100", "--threads", "1"]  # fmt: skip
    out = tmp_path / "killed"
    home = home_with_data(ntlab_home, tmp_path / "home")
    process = ntlab_process([*args, "--jobs", "2", "--out", str(out)], home)
    deadline = time.monotonic() + 300
    while not workers(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # mid-training
    victims = workers(process.pid)
    assert victims, "no worker process started"
    os.kill(victims[0], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 1, stdout + stderr
    assert "1 training failed" in stderr and "killed (SIGKILL)" in stderr
    assert "rerun with --resume" in stderr and "Traceback" not in stderr
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert not (out / "pairwise.csv").exists()  # no result file that looks complete
    resumed = ntlab_process([*args, "--jobs", "2", "--out", str(out), "--resume"], home)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stdout + stderr
    whole = tmp_path / "whole"
    fresh_home = home_with_data(ntlab_home, tmp_path / "home2")
    again = ntlab_process([*args, "--jobs", "2", "--out", str(whole)], fresh_home)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stdout + stderr
    pd.testing.assert_frame_equal(numbers(out / "pairwise.csv"), numbers(whole / "pairwise.csv"))


def test_the_cli_works_without_ray(fresh, tmp_path):
    """An environment without Ray: --help, a plain run and --jobs work; --executor ray says
    how to install it."""
    home = fresh("noray")
    block = "import sys; sys.modules['ray'] = None; from ntlab.cli import main; main()"
    env = {**os.environ, "NTLAB_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}

    def run(*args):
        return subprocess.run([sys.executable, "-c", block, *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    args = ["pairwise", "--domains", "optdigits,mnist", "--method", "ew", *BUDGET]
    assert run("pairwise", "--help").returncode == 0
    plain = run(*args, "--out", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr
    jobs = run(*args, "--jobs", "2", "--out", str(tmp_path / "jobs"))
    assert jobs.returncode == 0, jobs.stderr
    refused = run(*args, "--executor", "ray", "--out", str(tmp_path / "ray"))
    assert refused.returncode == 2
    assert "pip install 'ntlab[ray]'" in refused.stderr and "Traceback" not in refused.stderr


def test_forkmerge_train_with_jobs_trains_its_baselines_in_workers(fresh, tmp_path, monkeypatch):
    import ntlab.core.cache as cache

    args = ["forkmerge", "train", "--target", "optdigits", "--aux", "mnist",
            "--merge-every", "10", *BUDGET]  # fmt: skip
    fresh("one")
    assert invoke(*args, "--out", tmp_path / "one").exit_code == 0
    fresh("two")

    def refuse(*a, **k):
        raise AssertionError("a baseline was trained in the command's own process")

    monkeypatch.setattr(cache, "run_training", refuse)  # ForkMerge itself trains here
    result = invoke(*args, "--jobs", 2, "--out", tmp_path / "two")
    assert result.exit_code == 0, result.output
    one, two = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two"))
    for r in (one, two):
        r.pop("duration_s")
    assert one == two  # the sources too: both baselines were trained for this command
    assert two["stl"]["source"] == two["ew"]["source"] == "run"
