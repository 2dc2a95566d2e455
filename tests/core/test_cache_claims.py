"""Claims on cache keys: one process (or thread) trains a key, the others wait and read it;
the lock of an owner that is gone is taken over; an owner that fails lets the next train."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ntlab.core import cache
from ntlab.core.cache import Entry, Owner, Trained, get_or_train, inspect_lock

ROOT = Path(__file__).resolve().parents[2]
RESULTS = {"val_score": 50.0, "test_score": 40.0}


class Notes:
    """A progress callback that records the lines of a wait (`note`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.heard = threading.Event()

    def __call__(self, step: int) -> None:
        pass

    def note(self, line: str) -> None:
        self.lines.append(line)
        self.heard.set()


def trained(results=RESULTS) -> Trained:
    return Trained(dict(results), torch.nn.Linear(2, 2), {"k": 1})


def never() -> Trained:
    raise AssertionError("this training must not run: the entry was there to read")


@pytest.fixture
def entry(tmp_path) -> Entry:
    return Entry("runs", "k" * 20, "stl → optdigits", root=tmp_path / "cache")


def write_lock(entry: Entry, owner: Owner, age_s: float = 0.0) -> None:
    entry.lock_path.parent.mkdir(parents=True, exist_ok=True)
    entry.lock_path.write_text(json.dumps(owner.__dict__))
    if age_s:
        stamp = time.time() - age_s
        os.utime(entry.lock_path, (stamp, stamp))


def dead_pid() -> int:
    """The pid of a process that has run and exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    return int(done.stdout)


def in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_claim_records_its_owner_in_a_lock_and_removes_it_on_release(entry):
    with entry.claim() as claim:
        assert claim.owned
        owner = json.loads(entry.lock_path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert owner["what"] == "stl → optdigits" and owner["started"] <= time.time()
        assert entry.owner() == Owner(**owner)
        assert entry.lock_path.name == f".{entry.key}.lock"
    assert not entry.lock_path.exists() and entry.owner() is None


def test_a_second_claimant_waits_for_the_first_then_reads_what_it_stored(entry):
    notes = Notes()
    with entry.claim() as claim:
        assert claim.owned
        thread, out = in_thread(lambda: get_or_train(entry, never, on_step=notes))
        assert notes.heard.wait(30), "the second claimant did not say it waits"
        assert thread.is_alive()  # waiting, not training
        entry.store(RESULTS, torch.nn.Linear(2, 2), {"k": 1})
    thread.join(30)
    assert not thread.is_alive() and "error" not in out, out
    assert (out["value"].results, out["value"].source) == (RESULTS, "cache")
    assert notes.lines == [
        f"stl → optdigits: waiting for another process (pid {os.getpid()}) training it"
    ]
    assert sorted(p.name for p in entry.path.parent.iterdir()) == [entry.key]


def test_the_lock_of_a_process_that_is_gone_is_taken_over(entry):
    pid = dead_pid()
    write_lock(entry, Owner(pid, socket.gethostname(), time.time(), cache._pid_namespace()))
    assert inspect_lock(entry.lock_path).stale == "its process no longer runs"
    notes = Notes()
    found = get_or_train(entry, trained, on_step=notes)
    assert found.source == "run" and entry.results() == RESULTS
    assert notes.lines == [
        f"stl → optdigits: took over the claim of pid {pid} (its process no longer runs); "
        "training it here"
    ]
    assert not entry.lock_path.exists()


def test_a_lock_from_another_host_is_stale_only_once_its_heartbeat_stops(entry, monkeypatch):
    write_lock(entry, Owner(1, "elsewhere", time.time()))
    state = inspect_lock(entry.lock_path)
    assert state.stale is None and state.owner.describe() == "pid 1 on elsewhere"
    write_lock(entry, Owner(1, "elsewhere", time.time()), age_s=cache.STALE_AFTER_S + 60)
    assert inspect_lock(entry.lock_path).stale == "not touched for 11 min"
    assert get_or_train(entry, trained, on_step=Notes()).source == "run"


def test_an_owner_touches_its_lock_while_it_trains(entry, monkeypatch):
    monkeypatch.setattr(cache, "HEARTBEAT_S", 0.05)
    with entry.claim():
        stamp = time.time() - 3600
        os.utime(entry.lock_path, (stamp, stamp))
        deadline = time.time() + 10
        while entry.lock_path.stat().st_mtime < stamp + 1800 and time.time() < deadline:
            time.sleep(0.05)
        assert inspect_lock(entry.lock_path).stale is None


def test_an_owner_that_fails_releases_the_key_and_the_waiter_trains_it(entry):
    failing, notes = threading.Event(), Notes()

    def fails() -> Trained:
        failing.wait(30)
        raise ValueError("the owner's training failed")

    first, first_out = in_thread(lambda: get_or_train(entry, fails))
    deadline = time.time() + 30
    while not entry.lock_path.exists() and time.time() < deadline:
        time.sleep(0.01)
    second, second_out = in_thread(lambda: get_or_train(entry, trained, on_step=notes))
    assert notes.heard.wait(30)
    failing.set()
    first.join(30)
    second.join(30)
    assert isinstance(first_out["error"], ValueError)
    assert second_out["value"].source == "run" and entry.results() == RESULTS
    assert not entry.lock_path.exists()


def test_an_interrupted_owner_releases_its_lock(entry):
    def interrupted() -> Trained:
        assert entry.lock_path.exists()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_or_train(entry, interrupted)
    assert not entry.lock_path.exists() and not entry.exists()
    assert get_or_train(entry, trained).source == "run"


def test_a_damaged_entry_is_set_aside_and_trained_again_under_a_claim(entry, capsys):
    entry.store({"val_score": 1.0}, torch.nn.Linear(2, 2), {})
    (entry.path / "results.json").write_text("[")
    found = get_or_train(entry, trained)
    assert found.source == "run" and found.results == RESULTS and entry.results() == RESULTS
    assert "is damaged (results.json: not valid JSON" in capsys.readouterr().err
    assert len(list((entry.root / cache.BROKEN).iterdir())) == 1
    assert not entry.lock_path.exists()


def test_a_thread_claiming_a_key_it_holds_is_told_so_rather_than_waiting_forever(entry):
    with entry.claim(), pytest.raises(RuntimeError, match="already claimed by this thread"):
        get_or_train(entry, never)


CLAIM_AND_HANG = """
import sys, time
from pathlib import Path
from ntlab.core.cache import Entry
entry = Entry("runs", sys.argv[1], "stl → optdigits", root=Path(sys.argv[2]))
with entry.claim() as claim:
    print("claimed" if claim.owned else "not owned", flush=True)
    time.sleep(600)
"""


def test_a_sigkilled_owner_leaves_a_lock_that_the_next_process_takes_over(entry):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    owner = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_HANG, entry.key, str(entry.root)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert owner.stdout.readline().strip() == "claimed"
        assert entry.owner().pid == owner.pid
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(60)
    assert entry.lock_path.exists() and entry.owner() is None  # left behind, and stale
    notes = Notes()
    assert get_or_train(entry, trained, on_step=notes).source == "run"
    assert notes.lines[0].startswith(f"stl → optdigits: took over the claim of pid {owner.pid}")
    assert not entry.lock_path.exists()


def test_a_damaged_entry_that_cannot_be_set_aside_is_trained_not_waited_for(entry, capsys):
    entry.store({"val_score": 1.0}, torch.nn.Linear(2, 2), {})
    (entry.path / "results.json").write_text("[")
    (entry.root / cache.BROKEN).write_text("a file where broken/ should be")
    thread, out = in_thread(lambda: get_or_train(entry, trained))
    thread.join(30)
    assert not thread.is_alive(), "it waited for an entry that is already there"
    assert out["value"].source == "run" and out["value"].results == RESULTS
    assert "could not move it aside" in capsys.readouterr().err
    assert not entry.lock_path.exists()
