"""Run directories: --resume of every long command, one run per folder, --overwrite.

A resumed run continues a killed one in the same --out with the same options: the parts it
had finished are kept (not trained again) and the table is the one an uninterrupted run
gives. Interruptions are a KeyboardInterrupt from inside the run (the same path as Ctrl-C)
or a real process killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

import ntlab.analysis.compare as cmp
import ntlab.analysis.pairwise as pw
import ntlab.analysis.sweep as sw
from ntlab.cli import app

runner = CliRunner()
BUDGET = ["--steps", "6", "--batch-size", "16", "--eval-every", "3", "--merge-every", "3"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read(path):
    return json.loads(path.read_text())


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def interrupt_after(monkeypatch, module, name: str, n: int) -> list:
    """`module.name` raises KeyboardInterrupt on its call n + 1; returns the calls' args."""
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        if len(calls) == n:
            raise KeyboardInterrupt
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def count_calls(monkeypatch, module, name: str) -> list:
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


def same_table(a: pd.DataFrame, b: pd.DataFrame, drop=("source",)) -> None:
    a = a.drop(columns=[c for c in drop if c in a]).reset_index(drop=True)
    b = b.drop(columns=[c for c in drop if c in b]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


# --- pairwise (item 18: what it counts) ---------------------------------------------------


def test_pairwise_resume_counts_only_the_cells_it_trained(tiny_digits, tmp_path, monkeypatch):
    out = tmp_path / "p"
    args = ["pairwise", "--domains", "optdigits,mnist,syn", "--method", "ew", *BUDGET]
    args += ["--seeds", "41", "--out", out]
    interrupt_after(monkeypatch, pw, "run_cell", 2)
    assert invoke(*args).exit_code == 130
    monkeypatch.undo()
    trained = count_calls(monkeypatch, pw, "run_cell")
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming: 2 of 6 cells already finished" in result.output
    results = read(out / "results.json")
    assert len(trained) == 4
    assert results["cells_resumed"] == 2
    assert results["cells_trained"] + results["cells_from_cache"] == 4
    assert results["cells_trained"] == 4  # new seed: nothing of the pairs was cached
    # The same map uninterrupted (all from the cache now): the same table.
    again = tmp_path / "again"
    assert invoke(*args[:-1], again).exit_code == 0
    same_table(pd.read_csv(out / "pairwise.csv"), pd.read_csv(again / "pairwise.csv"))


# --- sweep, compare, csd (item 19) --------------------------------------------------------


def test_sweep_resume_keeps_finished_trainings(tiny_digits, tmp_path, monkeypatch):
    out = tmp_path / "s"
    args = ["sweep", "--target", "optdigits", "--aux", "mnist", "--lams", "0,0.5,1"]
    args += ["--seeds", "42,43", "--with-forkmerge", *BUDGET, "--out", out]
    interrupt_after(monkeypatch, sw, "cached_run", 4)  # seed 42's three λ, seed 43's STL
    result = invoke(*args)
    assert result.exit_code == 130
    assert len(pd.read_csv(out / "checkpoints" / "rows.csv")) == 4
    monkeypatch.undo()
    trained = count_calls(monkeypatch, sw, "cached_run")
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    results = read(out / "results.json")
    assert results["runs_resumed"] == 4
    # Seed 43's λ = 0.5 and 1, then each ForkMerge's STL reference: never seed 42's λ again.
    fixed = [c[0] for c in trained if c[0].method == "fixed"]
    assert sorted((c.seed, c.lam) for c in fixed) == [(43, 0.5), (43, 1.0)]
    again = tmp_path / "again"
    assert invoke(*args[:-1], again).exit_code == 0
    same_table(pd.read_csv(out / "sweep.csv"), pd.read_csv(again / "sweep.csv"))
    assert read(again / "results.json")["regime"] == results["regime"]


def test_compare_resume_keeps_finished_runs(tiny_digits, tmp_path, monkeypatch):
    out = tmp_path / "c"
    args = ["compare", "--target", "optdigits", "--aux", "mnist", "--methods", "ew,uw"]
    args += ["--seeds", "44,45", *BUDGET, "--out", out]
    interrupt_after(monkeypatch, cmp, "method_row", 3)  # stl (the reference) runs first
    assert invoke(*args).exit_code == 130
    monkeypatch.undo()
    rows = count_calls(monkeypatch, cmp, "method_row")
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert [(r[1], r[2]) for r in rows] == [("ew", 45), ("uw", 44), ("uw", 45)]
    results = read(out / "results.json")
    assert results["runs_resumed"] == 3 and results["runs_trained"] == 3
    again = tmp_path / "again"
    assert invoke(*args[:-1], again).exit_code == 0
    same_table(pd.read_csv(out / "compare.csv"), pd.read_csv(again / "compare.csv"))


def test_csd_resume_keeps_finished_trainings(tiny_digits, tmp_path, monkeypatch):
    out = tmp_path / "d"
    args = ["csd", "--target", "syn", "--aux", "mnist", "--lams", "0,0.5,1", "--seeds", "46"]
    args += [*BUDGET[:6], "--out", out]
    interrupt_after(monkeypatch, sw, "cached_run", 2)
    assert invoke(*args).exit_code == 130
    monkeypatch.undo()
    trained = count_calls(monkeypatch, sw, "cached_run")
    result = invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert [c[0].lam for c in trained] == [1.0]
    assert read(out / "results.json")["runs_resumed"] == 2
    again = tmp_path / "again"
    assert invoke(*args[:-1], again).exit_code == 0
    same_table(pd.read_csv(out / "csd.csv"), pd.read_csv(again / "csd.csv"))


SWEEP = ["sweep", "--target", "optdigits", "--aux", "mnist", "--lams", "0,1", "--seeds", "47"]


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (None, [], "--resume needs --out"),
        ("missing", [], "nothing to resume in"),
        ("finished", [], "the run is finished; pass --overwrite"),
        ("killed", ["--lams", "0,0.5"], "other options than the run in"),
        ("killed", ["--steps", "9"], "they differ in train"),
        ("killed", ["--overwrite"], "not both"),
    ],
)
def test_resume_refuses_what_it_cannot_continue(
    tiny_digits, tmp_path, monkeypatch, first, second, message
):
    out = tmp_path / "s"
    if first == "finished":
        assert invoke(*SWEEP, *BUDGET, "--out", out).exit_code == 0
    elif first == "killed":
        interrupt_after(monkeypatch, sw, "cached_run", 1)
        assert invoke(*SWEEP, *BUDGET, "--out", out).exit_code == 130
        monkeypatch.undo()
    before = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    where = ["--out", out] if first else []
    result = invoke(*SWEEP, *BUDGET, *second, *where, "--resume")
    assert result.exit_code == 2, result.output
    assert message in one_line(result)
    after = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert after == before  # nothing removed, nothing written


def test_forkmerge_resume_and_without_checkpoint(tiny_digits, tmp_path):
    out = tmp_path / "f"
    args = ["forkmerge", "train", "--target", "optdigits", "--aux", "mnist", *BUDGET]
    args += ["--no-baselines", "--out", out]
    result = invoke(*args, "--resume")
    assert result.exit_code == 2 and "--resume needs" not in result.stderr
    assert "nothing to resume" in one_line(result)


def test_forkmerge_resumes_with_other_branch_scheduling(tiny_digits, tmp_path):
    """--branch-exec does not change the numbers: a run started sequential may be resumed
    concurrent (the other options must still match)."""
    out = tmp_path / "f"
    args = ["forkmerge", "train", "--target", "optdigits", "--aux", "mnist,syn", *BUDGET]
    args += ["--no-baselines", "--merge-every", "2", "--out", out]
    assert invoke(*args).exit_code == 0
    finished = read(out / "results.json")
    (out / "results.json").unlink()  # as if killed after its last checkpoint
    again = invoke(*args, "--resume", "--branch-exec", "concurrent")
    assert again.exit_code == 0, again.output
    assert read(out / "results.json")["test_score"] == finished["test_score"]
    assert read(out / "config.json")["branch_exec"] == "concurrent"
    (out / "results.json").unlink()
    other = invoke(*args, "--resume", "--merge-every", "3")
    assert other.exit_code == 2 and "differ in forkmerge" in one_line(other)


# --- one run per folder (item 16) ---------------------------------------------------------


def ntlab_process(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "ntlab", *[str(a) for a in args]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        **kwargs,
    )


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.2)


def running(out) -> bool:
    try:
        return read(out / "status.json")["state"] == "running"
    except (OSError, ValueError):
        return False


def test_a_second_run_in_the_same_folder_is_refused(tiny_digits, tmp_path):
    out = tmp_path / "busy"
    slow = ntlab_process(
        "train", "--target", "optdigits", "--aux", "mnist", "--method", "ew",
        "--steps", "200000", "--batch-size", "16", "--seed", "48", "--quiet", "--out", out,
    )  # fmt: skip
    try:
        wait_for(lambda: running(out) or slow.poll() is not None)
        assert slow.poll() is None, slow.stderr.read()
        second = ntlab_process(
            "train", "--target", "optdigits", "--steps", "4", "--quiet", "--out", out
        )
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert f"{out} is in use by another ntlab run (pid {slow.pid}, started" in lines[0]
        assert running(out)  # the first run's folder is untouched
        assert read(out / "config.json")["train"]["steps"] == 200000
    finally:
        slow.kill()
        slow.wait(timeout=60)
    # Killed with SIGKILL, the first run could not release its lock: the next run takes
    # the folder over, saying so.
    assert (out / ".lock").is_file()
    third = invoke("train", "--target", "optdigits", "--steps", "4", "--batch-size", "16",
                   "--quiet", "--out", out)  # fmt: skip
    assert third.exit_code == 0, third.output
    assert f"took over the lock of {out} left by a run that ended" in third.stderr
    assert f"pid {slow.pid}" in third.stderr
    assert read(out / "status.json")["state"] == "completed"
    assert not (out / ".lock").exists()


def test_a_stale_lock_is_taken_over_and_a_live_one_is_not(tiny_digits, tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = {"pid": dead.pid, "host": os.uname().nodename, "started": "2026-01-01T00:00:00"}
    (out / ".lock").write_text(json.dumps(lock))
    result = invoke("train", "--target", "optdigits", "--steps", "4", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"took over the lock of {out}" in result.stderr and f"pid {dead.pid}" in result.stderr
    assert not (out / ".lock").exists()
    # A lock held (flock) by a live process is not taken over, whatever the file says.
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
         str(tmp_path / "held" / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    (tmp_path / "held").mkdir()
    try:
        assert holder.stdout.readline().strip() == "locked"
        held = tmp_path / "held"
        result = invoke("train", "--target", "optdigits", "--steps", "4", "--out", held)
        assert result.exit_code == 2
        assert "is in use by another ntlab run (pid unknown)" in one_line(result)
        assert not (tmp_path / "held" / "status.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_sweep_killed_with_sigkill_resumes(tiny_digits, tmp_path):
    out = tmp_path / "killed"
    args = ["sweep", "--target", "mnist", "--aux", "syn", "--lams", "0,0.5,1"]
    args += ["--seeds", "49", "--steps", "150", "--batch-size", "16", "--eval-every", "50"]
    args += ["--threads", "1"]  # the subprocess and the in-process resume: the same identity
    proc = ntlab_process(*args, "--quiet", "--out", out)
    rows = out / "checkpoints" / "rows.csv"
    try:
        wait_for(lambda: rows.is_file() or proc.poll() is not None, timeout=300)
        assert proc.poll() is None, "the sweep ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    done = len(pd.read_csv(rows))
    assert 1 <= done < 3 and not (out / "results.json").exists()
    result = invoke(*args, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert read(out / "results.json")["runs_resumed"] == done
    again = tmp_path / "again"
    assert invoke(*args, "--out", again).exit_code == 0
    same_table(pd.read_csv(out / "sweep.csv"), pd.read_csv(again / "sweep.csv"))


# --- --overwrite (item 17) ----------------------------------------------------------------


def test_overwrite_leaves_only_the_new_run(tiny_digits, tmp_path):
    out = tmp_path / "fm"
    fm = ["forkmerge", "train", "--target", "optdigits", "--aux", "mnist", *BUDGET]
    assert invoke(*fm, "--no-baselines", "--out", out).exit_code == 0
    for name in ("merges.csv", "search.csv", "lambda.png", "checkpoints"):
        assert (out / name).exists()
    result = invoke("train", "--target", "optdigits", "--steps", "4", "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    fresh = tmp_path / "fresh"
    assert invoke("train", "--target", "optdigits", "--steps", "4", "--out", fresh).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in fresh.iterdir())
    for name in ("merges.csv", "search.csv", "lambda.png", "checkpoints"):
        assert not (out / name).exists()
    assert read(out / "config.json")["command"] == "train"


def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny_digits, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke("train", "--target", "optdigits", "--steps", "4", "--out", out, "--overwrite")
    assert result.exit_code == 2
    assert "--overwrite empties only ntlab run folders" in one_line(result)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # Without --overwrite nothing of the user's is removed either.
    result = invoke("train", "--target", "optdigits", "--steps", "4", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "mine"
