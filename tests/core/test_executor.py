"""The executor of many trainings: worker processes (and Ray) fill the cache with exactly the
numbers one process would have trained."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from ntlab.config import TrainConfig
from ntlab.core.executor import Job, Settings, check_settings, plan, run_jobs
from ntlab.core.runner import cached_results, cached_run, stl_config
from ntlab.errors import NtlabError

BASE = TrainConfig(
    target="optdigits", method="ew", aux=["mnist"], steps=30, batch_size=16, device="cpu",
    threads=1,
)  # fmt: skip


def fresh_home(ntlab_home: Path, tmp_path: Path, monkeypatch, name: str) -> Path:
    """An NTLAB_HOME with the session's tiny data and an empty cache."""
    home = tmp_path / name
    shutil.copytree(ntlab_home / "datasets", home / "datasets")
    monkeypatch.setenv("NTLAB_HOME", str(home))
    return home


def variant(**changes) -> TrainConfig:
    return TrainConfig(**{**asdict(BASE), **changes})


JOBS = [
    Job(variant(), label="ew"),
    Job(stl_config(BASE), label="stl"),
    Job(variant(method="fixed", lam=0.5), label="fixed"),
    Job(variant(seed=1), label="ew seed 1"),
]
COMPARED = ("val_score", "test_score", "test_correct", "tasks")


def test_plan_keeps_each_entry_once_with_the_stl_runs_first(tiny_digits):
    again = Job(variant(), label="the same training again")
    planned = plan([*JOBS, again, Job(stl_config(variant(seed=1)), label="stl seed 1")])
    assert [j.label for j in planned] == ["stl", "stl seed 1", "ew", "fixed", "ew seed 1"]


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.pids: dict[str, int] = {}
        self.lock = threading.Lock()

    def cached(self, job):
        self.events.append(("cached", job.label))

    def started(self, job, pid=None):
        with self.lock:
            self.pids[job.label] = pid
            self.events.append(("started", job.label))

    def step(self, job, done):
        with self.lock:
            self.events.append(("step", job.label))

    def finished(self, outcome):
        self.events.append(("finished", outcome.job.label))


def test_two_workers_train_what_one_process_trains(ntlab_home, tiny_digits, tmp_path, monkeypatch):
    fresh_home(ntlab_home, tmp_path, monkeypatch, "parallel")
    shown = Recorder()
    outcomes = run_jobs(JOBS, Settings(jobs=2), shown)
    assert [o.error for o in outcomes] == [None] * 4
    assert {o.source for o in outcomes} == {"run"}
    assert {label for kind, label in shown.events if kind == "step"} == {j.label for j in JOBS}
    assert all(pid and pid != os.getpid() for pid in shown.pids.values())
    parallel = {j.label: cached_results(j.cfg) for j in JOBS}
    # a second run finds everything in the cache and starts no worker
    again = Recorder()
    assert {o.source for o in run_jobs(JOBS, Settings(jobs=2), again)} == {"cache"}
    assert [kind for kind, _ in again.events] == ["cached"] * 4

    fresh_home(ntlab_home, tmp_path, monkeypatch, "serial")
    for job in JOBS:
        results, source = cached_run(job.cfg)
        assert source == "run"
        for key in COMPARED:
            assert results[key] == parallel[job.label][key], (job.label, key)


def test_a_failing_training_fails_alone(ntlab_home, tiny_digits, tmp_path, monkeypatch):
    fresh_home(ntlab_home, tmp_path, monkeypatch, "failing")
    bad = Job(variant(lr=float("inf")), label="bad")
    outcomes = {o.job.label: o for o in run_jobs([bad, JOBS[0]], Settings(jobs=2))}
    assert outcomes["ew"].ok and outcomes["ew"].source == "run"
    assert not outcomes["bad"].ok and "--lr" in outcomes["bad"].error
    assert cached_results(bad.cfg) is None


def test_a_killed_worker_fails_its_training_and_the_others_finish(
    ntlab_home, tiny_digits, tmp_path, monkeypatch
):
    fresh_home(ntlab_home, tmp_path, monkeypatch, "killed")
    long = [Job(variant(steps=300, seed=s), label=f"seed {s}") for s in range(3)]

    class KillFirst(Recorder):
        def step(self, job, done):
            super().step(job, done)
            if job.label == "seed 0" and not getattr(self, "killed", False):
                self.killed = True
                os.kill(self.pids[job.label], signal.SIGKILL)

    outcomes = {o.job.label: o for o in run_jobs(long, Settings(jobs=2), KillFirst())}
    assert outcomes["seed 0"].error == "its worker process was killed (SIGKILL)"
    assert outcomes["seed 1"].ok and outcomes["seed 2"].ok
    assert cached_results(long[0].cfg) is None
    assert cached_results(long[2].cfg) is not None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (Settings(jobs=0), "--jobs"),
        (Settings(executor="dask"), "--executor"),
        (Settings(gpus_per_job=0), "--gpus-per-job"),
        (Settings(ray_address="auto"), "--executor ray"),
    ],
)
def test_bad_settings_are_rejected(settings, message):
    with pytest.raises(NtlabError, match=message):
        check_settings(settings)
