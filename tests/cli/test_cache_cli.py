"""`ntlab cache` as users drive it, and damaged cache entries, checkpoints and model files
met by the real command line (a subprocess: `python -m ntlab`)."""

import json
import os
import resource
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from ntlab import cache
from ntlab.cli import app
from ntlab.core.runner import store_cached
from tests.cache_home import private_home

runner = CliRunner()
FAST = ["--steps", "6", "--eval-every", "3", "--batch-size", "16"]
SMALL_FM = ["--target", "syn", "--aux", "mnist", *FAST, "--merge-every", "3", "--no-baselines"]
TSNE = ["--target", "syn", "--aux", "mnist", "--lams", "0", "--classes", "3", "--max-points", "60"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()]


@pytest.fixture
def home(tiny_digits, tmp_path, monkeypatch):
    return private_home(monkeypatch, tmp_path)


def entry(home, kind, key, days_old=0.0, **results):
    """A small real cache entry (what store_cached writes), optionally back-dated."""
    folder = home / "cache" / kind / key
    store_cached(folder, {"val_score": 1.0, **results}, torch.nn.Linear(20, 20), {"k": key})
    if days_old:
        stamp = time.time() - days_old * 86400
        for path in folder.iterdir():
            os.utime(path, (stamp, stamp))
    return folder


def temp_folder(home, key, minutes_old):
    folder = home / "cache" / "runs" / f".{key}.1234.{time.time_ns()}"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"x" * 100)
    stamp = time.time() - minutes_old * 60
    os.utime(folder / "model.pt", (stamp, stamp))
    return folder


@pytest.mark.parametrize("command", [[], ["info"], ["verify"], ["clear"]])
def test_every_cache_command_has_help(command):
    result = invoke("cache", *command, "--help")
    assert result.exit_code == 0
    for word in ("info", "verify", "clear") if not command else ("Usage",):
        assert word in result.stdout


def test_info_counts_entries_per_kind_broken_and_leftovers(home):
    entry(home, "runs", "a")
    entry(home, "runs", "b")
    entry(home, "forkmerge", "c")
    aside = home / "cache" / cache.BROKEN / "runs-x-20260101"
    aside.mkdir(parents=True)
    (aside / "results.json").write_text("{")
    old, fresh = temp_folder(home, "d", minutes_old=60), temp_folder(home, "e", minutes_old=0)
    result = runner.invoke(app, ["cache", "info"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:4]]
        for line in result.stdout.splitlines()
        if line.count("│") == 4
    }
    assert rows["runs/"][0] == "2" and rows["forkmerge/"][0] == "1"
    assert rows["broken/ (damaged, set aside)"][0] == "1"
    assert rows["leftover temporary folders"] == ["1", "100 B"]
    assert rows["being written now"][0] == "1"
    assert rows["total"][0] == "3" and rows["total"][1].endswith(" kB")
    assert f"cache: {home / 'cache'}" in result.stdout
    assert f"leftover: {old}" in result.stdout and str(fresh) not in result.stdout


def test_info_on_an_empty_cache(home):
    result = invoke("cache", "info")
    assert result.exit_code == 0 and "total" in result.stdout and "0 B" in result.stdout


def test_verify_lists_each_damaged_entry_and_exits_1(home):
    good = entry(home, "runs", "good")
    truncated = entry(home, "runs", "truncated")
    (truncated / "results.json").write_text('{"val_score": 1.')
    empty = entry(home, "forkmerge", "empty")
    (empty / "model.pt").write_bytes(b"")
    listed = entry(home, "runs", "listed")
    (listed / "config.json").write_text("[]")
    result = runner.invoke(app, ["cache", "verify"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    damaged = [line for line in lines(result.stdout) if line.startswith("damaged: ")]
    assert sorted(damaged) == sorted(
        [
            f"damaged: {truncated} (results.json: not valid JSON: "
            "Expecting ',' delimiter: line 1 column 16 (char 15))",
            f"damaged: {empty} (model.pt: empty file)",
            f"damaged: {listed} (config.json: a JSON list, not an object)",
        ]
    )
    assert "4 entries read" in result.stdout and "3 damaged" in result.stdout
    assert str(good) not in result.stdout

    fixed = invoke("cache", "verify", "--fix")
    assert fixed.exit_code == 1 and fixed.stdout.count("moved to") == 3 and not fixed.stderr
    assert sorted(p.name for p in (home / "cache" / "runs").iterdir()) == ["good"]
    assert len(list((home / "cache" / cache.BROKEN).iterdir())) == 3
    again = invoke("cache", "verify")
    assert again.exit_code == 0 and "1 entry read" in again.stdout and "0 damaged" in again.stdout


def test_clear_older_than_keeps_recent_entries_and_removes_the_debris(home):
    old = entry(home, "runs", "old", days_old=10)
    new = entry(home, "runs", "new", days_old=1)
    fm_old = entry(home, "forkmerge", "fm", days_old=30)
    aside = home / "cache" / cache.BROKEN / "runs-x"
    aside.mkdir(parents=True)
    leftover, running = temp_folder(home, "t", minutes_old=60), temp_folder(home, "u", 0)
    result = invoke("cache", "clear", "--older-than", "5")
    assert result.exit_code == 0, result.output
    assert not old.exists() and not fm_old.exists() and not aside.exists()
    assert not leftover.exists()
    assert new.exists() and running.exists()
    out = result.stdout
    assert "removed 1 entry from runs/" in out and "removed 1 entry from forkmerge/" in out
    assert "removed 1 damaged entry set aside in broken/" in out
    assert "removed 1 leftover temporary folder" in out
    assert "1 entry kept" in out and "left 1 temporary folder of stores still being written" in out

    everything = invoke("cache", "clear")
    assert everything.exit_code == 0 and not new.exists() and "0 entries kept" in everything.stdout


def test_clear_broken_removes_only_what_was_set_aside(home):
    kept = entry(home, "runs", "kept", days_old=100)
    aside = home / "cache" / cache.BROKEN / "runs-x"
    aside.mkdir(parents=True)
    result = invoke("cache", "clear", "--broken")
    assert result.exit_code == 0 and kept.exists() and not aside.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--older-than", "nan"], "--older-than must be a number of days ≥ 0, got nan"),
        (["--older-than", "-1"], "--older-than must be a number of days ≥ 0, got -1.0"),
        (["--older-than", "inf"], "--older-than must be a number of days ≥ 0, got inf"),
        (
            ["--older-than", "2", "--broken"],
            "--broken and --older-than exclude each other; give one of them",
        ),
    ],
)
def test_clear_refuses_bad_ages(home, args, message):
    kept = entry(home, "runs", "kept", days_old=100)
    result = invoke("cache", "clear", *args)
    assert result.exit_code == 2 and lines(result.stderr) == [f"error: {message}"]
    assert kept.exists()


# --- damaged files met by the real command line ----------------------------------------------


def the_entry(home, method="stl"):
    [folder] = [
        p.parent
        for p in (home / "cache" / "runs").glob("*/config.json")
        if json.loads(p.read_text())["method"] == method
    ]
    return folder


def train_stl(tmp_path):
    out = tmp_path / "stl"
    result = invoke("train", "--method", "stl", "--target", "syn", *FAST, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    return out


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def setup_truncated_results(home, tmp_path):
    train_stl(tmp_path)
    truncate(the_entry(home) / "results.json")
    return ["train", "--method", "ew", "--aux", "mnist", "--target", "syn", *FAST]


def setup_zero_byte_model(home, tmp_path):
    train_stl(tmp_path)
    (the_entry(home) / "model.pt").write_bytes(b"")
    return ["tsne", *TSNE, *FAST]


def setup_truncated_checkpoint(home, tmp_path):
    result = invoke("forkmerge", "train", *SMALL_FM, "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    (tmp_path / "out" / "results.json").unlink()  # as if the run had been killed
    truncate(tmp_path / "out" / "checkpoints" / "forkmerge.pt")
    return ["forkmerge", "train", *SMALL_FM, "--resume"]


def setup_truncated_run_model(home, tmp_path):
    truncate(train_stl(tmp_path) / "model.pt")
    return ["tsne", *TSNE, "--from", tmp_path / "stl"]


def setup_full_disk(home, tmp_path):
    return ["train", "--method", "stl", "--target", "syn", *FAST]


def check_retrained(home, tmp_path, out):
    assert len(list((home / "cache" / cache.BROKEN).iterdir())) == 1
    assert cache.check_entry(the_entry(home)) is None  # stored afresh
    assert json.loads((out / "status.json").read_text())["state"] == "completed"


def check_checkpoint_kept(home, tmp_path, out):
    assert (out / "checkpoints" / "forkmerge.pt").is_file()  # the user decides
    assert not (out / "results.json").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


def check_no_results(home, tmp_path, out):
    assert not (out / "results.json").exists()


def check_nothing_half_written(home, tmp_path, out):
    assert list((home / "cache" / "runs").iterdir()) == []  # no temporary folder
    assert not list(out.rglob(".*.tmp")) and not (out / "results.json").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # a full disk, to a writer


DAMAGED = [
    # setup → command, exit code, fragments of the one stderr line, what is left on disk
    pytest.param(
        setup_truncated_results, 0,
        ["warning: cache entry", "results.json: not valid JSON", "training it again"],
        check_retrained, None, id="cache-results-truncated",
    ),
    pytest.param(
        setup_zero_byte_model, 0,
        ["warning: cache entry", "model.pt: empty file", "moved it to"],
        check_retrained, None, id="cache-model-zero-bytes",
    ),
    pytest.param(
        setup_truncated_checkpoint, 2,
        ["error: ", "checkpoints/forkmerge.pt is damaged", "without --resume"],
        check_checkpoint_kept, None, id="forkmerge-checkpoint-truncated",
    ),
    pytest.param(
        setup_truncated_run_model, 2,
        ["error: ", "stl/model.pt is damaged", "train it again"],
        check_no_results, None, id="run-model-truncated",
    ),
    pytest.param(
        setup_full_disk, 2,
        ["error: could not write ", "/model.pt: File too large", "free some space"],
        check_nothing_half_written, limit_file_size, id="write-fails",
    ),
]  # fmt: skip


@pytest.mark.parametrize("setup, code, fragments, check, preexec", DAMAGED)
def test_damaged_files_through_the_real_cli(home, tmp_path, setup, code, fragments, check, preexec):
    args = [*setup(home, tmp_path), "--out", tmp_path / "out"]
    proc = subprocess.run(
        [sys.executable, "-m", "ntlab", *map(str, args), "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=preexec,
        env={**os.environ, "NTLAB_HOME": str(home), "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
    )
    assert proc.returncode == code, proc.stderr
    err = lines(proc.stderr)
    assert len(err) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in err[0]
    assert "Traceback" not in proc.stderr
    check(home, tmp_path, tmp_path / "out")


# --- claims: trainings under way and stale locks ---------------------------------------------


def lock(home, kind, key, pid=None):
    """A claim on `key` as a training process writes it: by this (live) process, or by
    `pid`."""
    from ntlab.core.cache import Owner

    owner = Owner.me("stl → syn")
    if pid is not None:
        owner = Owner(pid, owner.host, owner.started, owner.pidns, owner.what)
    path = home / "cache" / kind / f".{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(owner.__dict__))
    return path


def gone_pid():
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)  # fmt: skip


def test_info_and_verify_name_trainings_under_way_and_stale_locks(home):
    entry(home, "runs", "done")
    live = lock(home, "runs", "busy")
    pid = gone_pid()
    stale = lock(home, "forkmerge", "dead", pid=pid)
    result = runner.invoke(app, ["cache", "info"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in result.stdout.splitlines()
        if line.count("│") == 4
    }
    assert rows["being trained now (claimed)"] == "1" and rows["stale locks"] == "1"
    assert rows["total"] == "1"  # locks are not entries
    out = lines(result.stdout)
    assert f"stale lock: {stale} (pid {pid}, its process no longer runs)" in out
    assert f"being trained: runs/busy (stl → syn) by pid {os.getpid()}" in out
    checked = runner.invoke(app, ["cache", "verify"], env={"COLUMNS": "300"})
    assert checked.exit_code == 0 and f"stale lock: {stale}" in checked.stdout
    assert live.exists() and stale.exists()  # looking changes nothing


def test_clear_removes_stale_locks_and_leaves_a_training_under_way_alone(home):
    busy = entry(home, "runs", "busy", days_old=10)  # stored, its lock not yet released
    busy_lock = lock(home, "runs", "busy")
    storing = temp_folder(home, "storing", minutes_old=60)  # an old store of a live claim
    storing_lock = lock(home, "runs", "storing")
    stale = lock(home, "runs", "dead", pid=gone_pid())
    other = entry(home, "runs", "other", days_old=10)
    result = invoke("cache", "clear")
    assert result.exit_code == 0, result.output
    assert not other.exists() and not stale.exists()
    assert busy.exists() and busy_lock.exists() and storing.exists() and storing_lock.exists()
    out = result.stdout
    assert "removed 1 entry from runs/" in out and "removed 1 stale lock" in out
    assert "skipped 1 entry claimed by a live process" in out
    assert "left 2 trainings under way" in out
    assert "left 1 temporary folder of stores still being written" in out
    busy_lock.unlink()
    storing_lock.unlink()
    assert invoke("cache", "clear").exit_code == 0 and not busy.exists() and not storing.exists()


def test_clear_broken_removes_stale_locks_too(home):
    stale = lock(home, "runs", "dead", pid=gone_pid())
    live = lock(home, "runs", "busy")
    result = invoke("cache", "clear", "--broken")
    assert result.exit_code == 0 and "removed 1 stale lock" in result.stdout
    assert not stale.exists() and live.exists()
