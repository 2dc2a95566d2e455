"""The run cache (NTLAB_HOME/cache): one interface for every training ntlab keeps — its
key, reading its entry, claiming it before training it, storing it, checking it — and the
upkeep behind `ntlab cache`.

Layout: one folder per kind (`runs/`: single trainings, `forkmerge/`: ForkMerge runs), one
entry per key inside it (`results.json`, `config.json`, `model.pt`, and a training's tidy
`metrics.csv`). An entry is filled under a temporary name (`.<key>.<pid>.<ns>`) and renamed
when complete, so a reader sees a whole entry or none; entries found damaged are moved into
`broken/` and trained again.

Claims. Before a process trains a key it creates `<kind>/.<key>.lock` with
O_CREAT|O_EXCL (exactly one process succeeds), holding its owner as JSON: pid, host, pid
namespace, start time and what it trains. While it trains, a heartbeat thread touches the
file every HEARTBEAT_S seconds; it stores the entry, then removes the lock — on an
exception or Ctrl-C too. A second process wanting the same key (`get_or_train`) finds the
lock, says so in one line and looks again after 0.2 s, then less often, at most every
second (POLL_S; it sleeps in between): once the entry is there it reads it instead of
training; once the lock is gone without an entry (the owner failed) it claims the key and
trains itself. Reading an entry takes no lock. A lock is *stale* when its owner
is gone — same host and pid namespace and the pid no longer exists (a SIGKILLed owner) —
or when it has not been touched for STALE_AFTER_S seconds (an owner on another host that
died, or hangs); a waiter takes a stale lock over by renaming it away (then checking that
it moved the very file it judged, putting it back otherwise) and creating its own. At
worst — two waiters taking over one stale lock in the same instant — a key is trained
twice; the first store wins and no entry is ever mixed.

This needs a file system, shared by every process using the cache, on which O_EXCL create
and rename are atomic: a local disk, NFSv3 or later, or any POSIX shared file system.

Why an own lock file and not `filelock` (already installed with torch): its `FileLock`
holds an `flock`, which the kernel drops when the owner dies (no stale locks) but which
records no owner — a waiter could not say whom it waits for, nor `ntlab cache clear` tell
a training under way from a leftover file — and which NFS clients emulate unevenly; its
`SoftFileLock` (existence only, like this one) never judges a lock stale, so a SIGKILLed
owner would block every later process until someone deleted the file.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import importlib.resources
import io
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ntlab.config import ForkMergeOptions, TrainConfig
from ntlab.core.runner import (
    benchmark_of,
    build_model,
    load_weights,
    resolve_device,
    resolved_threads,
    run_training,
    stl_config,
    trained_tasks,
    validate,
)
from ntlab.core.speed import resolved_speed
from ntlab.errors import NtlabError
from ntlab.methods import get_method
from ntlab.paths import runs_cache_dir
from ntlab.runs import atomic_write_text, write_failed, write_json
from ntlab.storage import DamagedFileError, load_torch_file, read_json_object, save_torch_file

if TYPE_CHECKING:
    from ntlab.core.forkmerge import BranchSpec
    from ntlab.core.runner import TrainOutcome
    from ntlab.data import TaskData
    from ntlab.models import MultiTaskModel

# The sources whose content can change a trained number (the CLI, the report, presets —
# which resolve into the config — and the paths do not).
CODE_PARTS = (
    "core", "methods", "models", "data", "analysis", "metrics.py", "config.py", "tasks.py",
    "dense_metrics.py", "ctr.py",
)  # fmt: skip
ENTRY_FILES = ("results.json", "config.json", "model.pt")
NOT_IN_KEY = {"eval_every", "workers"}  # options that never change the trained weights
METRICS_FILE = "metrics.csv"
STL_METRICS_FILE = "stl_metrics.csv"  # a run's copy of its STL baseline's validation curve
METRIC_COLUMNS = ("step", "task", "split", "metric", "value")
KINDS = ("runs", "forkmerge")
BROKEN = "broken"
LEFTOVER_AGE_S = 600  # a temporary folder older than this belongs to no running store
TEMP_NAME = re.compile(r"^\.(?P<key>.+)\.\d+\.\d+$")
LOCK_NAME = re.compile(r"^\.(?P<key>.+)\.lock$")
ASIDE_NAME = re.compile(r"^\..+\.lock\.stale\.\d+\.\d+$")  # a lock a takeover moved away
RETRAIN = "it is trained again when needed"

POLL_S = (0.2, 1.0)  # a waiter looks again after 0.2 s, then less often, at most every 1 s
HEARTBEAT_S = 30.0  # how often an owner touches its lock
STALE_AFTER_S = 600.0  # a lock untouched this long has no live owner, whatever its host
UNREADABLE_AFTER_S = 10.0  # a lock still not valid JSON after this long was never finished


# --- the code's identity and the keys ----------------------------------------------------


def source_digest(root: Any, parts: tuple[str, ...] = CODE_PARTS) -> str:
    """sha256 over the sorted relative paths and bytes of the `.py` files of `parts` under
    the package folder `root` (a Path, or an importlib Traversable inside an install)."""
    files: list[tuple[str, Any]] = []

    def walk(node: Any, rel: str) -> None:
        if node.is_dir():
            if node.name != "__pycache__":
                for child in node.iterdir():
                    walk(child, f"{rel}/{child.name}")
        elif node.name.endswith(".py"):
            files.append((rel, node))

    for part in parts:
        node = root / part
        if not (node.is_dir() or node.is_file()):
            raise NtlabError(f"ntlab's source {part} is missing from {root}; reinstall ntlab")
        walk(node, part)
    h = hashlib.sha256()
    for rel, node in sorted(files, key=lambda item: item[0]):
        data = node.read_bytes()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:20]


@functools.cache
def code_digest() -> str:
    """The identity of the code that trains (computed once per process): any change to
    a method, the merge or the data code — or to this module — changes every cache key."""
    return source_digest(importlib.resources.files("ntlab"))


def digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def cache_key(cfg: TrainConfig) -> str:
    """Identical keys ⇔ identical trainings (same data, code, config, device type, torch);
    options a method ignores (λ outside `fixed`, the auxiliary tasks of `stl`) are left out.

    The code is identified by a digest of the sources that train and measure
    (`code_digest`), so a change to any of them retires every cached training.
    """
    method = get_method(cfg.method)
    # with --select best-val the validation checks pick the model, so their spacing counts
    ignored = NOT_IN_KEY - {"eval_every"} if cfg.select == "best-val" else NOT_IN_KEY
    payload = {
        **{k: v for k, v in asdict(cfg).items() if k not in ignored},
        "aux": cfg.aux if method.uses_aux else [],
        "lam": cfg.lam if method.uses_lam else None,
        "device": resolve_device(cfg.device).type,
        "threads": resolved_threads(cfg),
        **resolved_speed(cfg),
        "data": benchmark_of(cfg).fingerprint(),
        "weights_md5": _file_md5(cfg.weights) if cfg.weights else None,
        "code": code_digest(),
        "torch": torch.__version__,
    }
    return digest(payload)


def _file_md5(path: str) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def forkmerge_key(cfg: TrainConfig, branches: list[BranchSpec], opts: ForkMergeOptions) -> str:
    """Identical training config, branches and ForkMerge options ⇔ the same key."""
    payload = {
        "train": cache_key(cfg),
        "branches": [b.describe() for b in branches],
        "forkmerge": opts.key_fields(),
    }
    return digest(payload)


# --- reading an entry ---------------------------------------------------------------------


def warn(message: str) -> None:
    """One line on stderr (the core does not import the command line's console)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def entry_results(folder: Path) -> dict | None:
    """The results of the cache entry `folder`, or None when there is none. A damaged
    entry is set aside (one warning line) and reads as none: its training runs again."""
    if not folder.exists():
        return None
    try:
        return read_json_object(folder / "results.json", RETRAIN)
    except DamagedFileError as exc:
        set_aside(folder, exc)
        return None


def entry_model(folder: Path, map_location: Any) -> tuple[dict, dict] | None:
    """(results, model state) of the cache entry `folder`, or None (set aside if damaged)."""
    if not folder.exists():
        return None
    try:
        results = read_json_object(folder / "results.json", RETRAIN)
        state = load_torch_file(folder / "model.pt", RETRAIN, map_location=map_location)
        if not isinstance(state, dict):
            raise DamagedFileError(folder / "model.pt", "not a model state", RETRAIN)
    except DamagedFileError as exc:
        set_aside(folder, exc)
        return None
    return results, state


def set_aside(folder: Path, problem: DamagedFileError, say: bool = True) -> Path | None:
    """Move a damaged entry into `broken/` (where `ntlab cache info/clear` see it) and say
    so in one line (unless not `say`); the caller then trains again and stores a fresh entry."""
    root = folder.parent.parent
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = root / BROKEN / f"{folder.parent.name}-{folder.name}-{stamp}-{time.time_ns() % 10**6}"
    what = f"cache entry {folder} is damaged ({problem.path.name}: {problem.reason})"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(dest)
    except OSError as exc:
        if not say:
            raise NtlabError(f"could not move {folder} aside: {exc.strerror or exc}") from None
        if not folder.exists():  # another process set it aside meanwhile
            warn(f"{what}; training it again")
        else:
            warn(f"{what}; could not move it aside ({exc.strerror or exc}); training it again")
        return None
    if say:
        warn(f"{what}; moved it to {dest} and training it again")
    return dest


def check_entry(path: Path) -> DamagedFileError | None:
    """The first damaged file of a cache entry, or None when every file reads."""
    try:
        read_json_object(path / "results.json", RETRAIN)
        read_json_object(path / "config.json", RETRAIN)
        state = load_torch_file(path / "model.pt", RETRAIN)
        if not isinstance(state, dict):
            raise DamagedFileError(path / "model.pt", "not a model state", RETRAIN)
    except DamagedFileError as exc:
        return exc
    return None


# --- storing an entry ---------------------------------------------------------------------


def metrics_csv(rows: list[dict]) -> str:
    """Tidy metric rows (step, task, split, metric, value) as CSV text."""
    out = io.StringIO()
    writer = csv.DictWriter(out, METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def store_cached(
    final: Path,
    results: dict,
    model: torch.nn.Module,
    config: dict,
    metrics: list[dict] | None = None,
) -> None:
    """Write a cache entry (model.pt, config.json, results.json and, when given, the tidy
    metrics.csv of the training) atomically: a folder is filled under a temporary name, then
    renamed; the first writer wins. A write that fails (full disk) removes the temporary
    folder and raises NtlabError naming the file.

    config.json records the code digest and torch version the entry was trained with."""

    def fill(tmp: Path) -> None:
        save_torch_file(model.state_dict(), tmp / "model.pt")
        identity = {"code": code_digest(), "torch": torch.__version__}
        write_json(tmp / "config.json", {**config, **identity})
        write_json(tmp / "results.json", results)
        if metrics:
            atomic_write_text(tmp / METRICS_FILE, metrics_csv(metrics))

    store_folder(final, fill)


def store_folder(final: Path, fill: Callable[[Path], None]) -> None:
    """Make the entry folder `final` atomically: `fill` writes its files into a temporary
    folder beside it, which is then renamed; the first writer wins (an entry already there
    is kept). A write that fails removes the temporary folder and raises NtlabError naming
    `final`."""
    if final.exists():
        return
    tmp = final.parent / f".{final.name}.{os.getpid()}.{time.time_ns()}"
    try:
        try:
            tmp.mkdir(parents=True)
            fill(tmp)
        except OSError as exc:
            raise write_failed(tmp, exc) from None
        with contextlib.suppress(OSError):  # another process stored the same entry meanwhile
            tmp.rename(final)
    except NtlabError as exc:  # name the entry, not its temporary folder
        raise NtlabError(str(exc).replace(str(tmp), str(final))) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- claims: who is training a key ------------------------------------------------------


def _pid_namespace() -> str | None:
    """This process's pid namespace (Linux), so that containers sharing a host name and a
    disk do not judge each other's pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class Owner:
    """The process that holds a lock, as its lock file records it."""

    pid: int
    host: str
    started: float
    pidns: str | None = None
    what: str = ""

    @classmethod
    def me(cls, what: str = "") -> Owner:
        return cls(os.getpid(), socket.gethostname(), time.time(), _pid_namespace(), what)

    def here(self) -> bool:
        """Whether this process can tell by its pid if the owner runs (same host and pids)."""
        return self.host == socket.gethostname() and self.pidns == _pid_namespace()

    def running(self) -> bool:
        """False only when the owner is known to be gone (same host, pid absent)."""
        if not self.here():
            return True
        if self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # EPERM: it exists under another user
            return True
        return True

    def describe(self) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        return f"pid {self.pid}{where}"


@dataclass(frozen=True)
class LockState:
    """A look at a lock file: its owner (None when unreadable), whether it is stale and why,
    and the file's identity (so a takeover can check it moves this very file)."""

    path: Path
    owner: Owner | None
    stale: str | None  # why the lock has no live owner, or None while it has one
    ino: int
    mtime_ns: int


def inspect_lock(path: Path, now: float | None = None) -> LockState | None:
    """The state of the lock file `path`, or None when there is none."""
    now = time.time() if now is None else now
    try:
        st = path.stat()
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError):
        text = ""
    try:
        data = json.loads(text)
        owner = Owner(
            int(data["pid"]),
            str(data["host"]),
            float(data["started"]),
            data.get("pidns"),
            str(data.get("what", "")),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        owner = None
    age = now - st.st_mtime
    if age > STALE_AFTER_S:
        stale = f"not touched for {age / 60:.0f} min"
    elif owner is None:
        stale = "unreadable" if age > UNREADABLE_AFTER_S else None  # else: being written
    elif not owner.running():
        stale = "its process no longer runs"
    else:
        stale = None
    return LockState(path, owner, stale, st.st_ino, st.st_mtime_ns)


# Locks this process holds, by path, with the thread that holds each: a thread claiming a
# key it already holds would wait for itself forever.
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


class Claim:
    """`with entry.claim() as claim:` — waits until this process owns the key
    (`claim.owned`) or the entry is stored by another (`not claim.owned`: read it), and
    releases the lock on leaving the block however it is left.

    `on_wait(line)` gets one line when the key is found claimed by a live owner (and one
    when a stale lock is taken over); default: stderr."""

    def __init__(
        self,
        entry: Entry,
        on_wait: Callable[[str], None] | None = None,
        until_stored: bool = True,
    ) -> None:
        self.entry = entry
        self.path = entry.lock_path
        self.on_wait = on_wait or _stderr_line
        self.until_stored = until_stored  # False: wait for the lock even if an entry is there
        self.owned = False
        self._ino: int | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> Claim:
        try:
            self.owned = self._acquire()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _acquire(self) -> bool:
        said: Owner | None = None
        delay = POLL_S[0]
        while True:
            if self.until_stored and self.entry.exists():
                return False
            if self._create():
                return True
            state = inspect_lock(self.path)
            if state is None:
                continue  # released between our try and our look
            if state.stale is not None:
                if self._take_over(state):
                    who = state.owner.describe() if state.owner else "an unknown process"
                    self.on_wait(
                        f"{self.entry.label}: took over the claim of {who} "
                        f"({state.stale}); training it here"
                    )
                continue
            if state.owner is not None and state.owner != said:
                said = state.owner
                if state.owner.pid == os.getpid() and state.owner.here():
                    with _held_guard:
                        if _held.get(self.path) == threading.get_ident():
                            raise RuntimeError(f"{self.path} is already claimed by this thread")
                self.on_wait(
                    f"{self.entry.label}: waiting for another process "
                    f"({state.owner.describe()}) training it"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, POLL_S[1])

    def _create(self) -> bool:
        """O_CREAT|O_EXCL: True when this process now owns the lock."""
        owner = Owner.me(self.entry.label)
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._create()
        except OSError as exc:
            raise write_failed(self.path, exc) from None
        try:
            self._ino = os.fstat(fd).st_ino
            os.write(fd, (json.dumps(asdict(owner)) + "\n").encode())
        except OSError as exc:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise write_failed(self.path, exc) from None
        os.close(fd)
        with _held_guard:
            _held[self.path] = threading.get_ident()
        self._beat = threading.Thread(target=self._heartbeat, name="ntlab-cache-lock", daemon=True)
        self._beat.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self._mine():
                with contextlib.suppress(OSError):
                    os.utime(self.path)

    def _mine(self) -> bool:
        try:
            return self._ino is not None and self.path.stat().st_ino == self._ino
        except OSError:
            return False

    def _take_over(self, judged: LockState) -> bool:
        """Rename the stale lock away; True when the file moved is the one judged stale (a
        live lock moved by mistake — another waiter took over first — is put back)."""
        aside = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}.{time.time_ns()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            st = aside.stat()
            if (st.st_ino, st.st_mtime_ns) != (judged.ino, judged.mtime_ns):
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
                return False
            return True
        finally:
            aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this claim's."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._ino is not None:
            if self._mine():
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            with _held_guard:
                _held.pop(self.path, None)
            self._ino = None


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- entries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One key of the cache: `<root>/<kind>/<key>`, claimed through `<kind>/.<key>.lock`.
    `label` names the training in the lines a waiting process prints (`stl → optdigits`)."""

    kind: str
    key: str
    label: str = ""
    root: Path = field(default_factory=runs_cache_dir)

    @property
    def path(self) -> Path:
        return self.root / self.kind / self.key

    @property
    def lock_path(self) -> Path:
        return self.root / self.kind / f".{self.key}.lock"

    def exists(self) -> bool:
        """Whether a complete entry is stored (not yet whether it reads: `verify`)."""
        return self.path.is_dir()

    def results(self) -> dict | None:
        """The stored results, or None (a damaged entry is set aside, with one warning)."""
        return entry_results(self.path)

    def model(self, map_location: Any = "cpu") -> tuple[dict, dict] | None:
        """(results, model state) stored, or None (a damaged entry is set aside)."""
        return entry_model(self.path, map_location)

    def verify(self) -> DamagedFileError | None:
        """The first damaged file of the entry, or None when every file reads."""
        return check_entry(self.path)

    def owner(self) -> Owner | None:
        """The live process that claims the key, if any."""
        state = inspect_lock(self.lock_path)
        return state.owner if state is not None and state.stale is None else None

    def claim(
        self, on_wait: Callable[[str], None] | None = None, until_stored: bool = True
    ) -> Claim:
        return Claim(self, on_wait, until_stored)

    def store(
        self,
        results: dict,
        model: torch.nn.Module,
        config: dict,
        metrics: list[dict] | None = None,
    ) -> None:
        store_cached(self.path, results, model, config, metrics)


@dataclass
class Trained:
    """What a training hands the cache to keep."""

    results: dict
    model: torch.nn.Module
    config: dict
    metrics: list[dict] | None = None
    outcome: Any = None  # the training's own outcome (TrainOutcome, ForkMergeOutcome)


@dataclass
class Found:
    """An entry's results and where they came from: "cache" or "run" (trained here)."""

    results: dict
    source: str
    state: dict | None = None  # the model's weights, when asked for
    trained: Trained | None = None  # what was trained, on a run


def get_or_train(
    entry: Entry,
    train: Callable[[], Trained],
    *,
    with_model: bool = False,
    map_location: Any = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> Found:
    """The entry's results (and weights `with_model`), read when stored, otherwise trained
    once and stored: lookup → claim (waiting for another process that trains the same
    key) → lookup again → train → store → release.

    The lines of a wait go through `on_step.note` when the progress callback has one, to
    stderr otherwise."""

    def read() -> Found | None:
        if with_model:
            hit = entry.model(map_location)
            return None if hit is None else Found(hit[0], "cache", hit[1])
        results = entry.results()
        return None if results is None else Found(results, "cache")

    label = getattr(on_step, "description", None) or entry.label
    entry = Entry(entry.kind, entry.key, label, entry.root)
    while True:
        found = read()
        if found is not None:
            return found
        # an entry still there after a failed read is damaged and could not be set aside:
        # train it anyway (its store is then a no-op) rather than wait for it to appear
        readable = not entry.exists()
        with entry.claim(getattr(on_step, "note", None), until_stored=readable) as claim:
            if not claim.owned:
                continue  # another process stored it while we waited: read it
            found = read() if readable else None
            if found is not None:
                return found
            trained = train()
            entry.store(trained.results, trained.model, trained.config, trained.metrics)
        state = trained.model.state_dict() if with_model else None
        return Found(trained.results, "run", state, trained)


# --- single trainings and ForkMerge runs through the cache ------------------------------


def runs_entry(cfg: TrainConfig) -> Entry:
    return Entry("runs", cache_key(cfg), f"{cfg.method} → {cfg.target}")


def forkmerge_entry(cfg: TrainConfig, branches: list[BranchSpec], opts: ForkMergeOptions) -> Entry:
    return Entry("forkmerge", forkmerge_key(cfg, branches, opts), f"forkmerge → {cfg.target}")


def run_cache_dir(cfg: TrainConfig) -> Path:
    return runs_entry(cfg).path


def forkmerge_cache_dir(
    cfg: TrainConfig, branches: list[BranchSpec], opts: ForkMergeOptions
) -> Path:
    """Identical training config, branches and ForkMerge options ⇔ the same folder."""
    return forkmerge_entry(cfg, branches, opts).path


def run_config(cfg: TrainConfig) -> dict:
    """What a training's config.json records (with the resolved thread count)."""
    return {**asdict(cfg), "threads": resolved_threads(cfg), **resolved_speed(cfg)}


def cached_results(cfg: TrainConfig) -> dict | None:
    """The cached results of `cfg`, or None (a damaged entry is set aside, with a warning)."""
    return runs_entry(cfg).results()


def store_run(cfg: TrainConfig, outcome: TrainOutcome) -> None:
    """Keep a run's results, weights and curves for every later command that needs the same
    training."""
    runs_entry(cfg).store(outcome.results, outcome.state.model, run_config(cfg), outcome.metrics)


def _train(cfg: TrainConfig, on_step: Callable[[int], None] | None) -> Callable[[], Trained]:
    def train() -> Trained:
        outcome = run_training(cfg, on_step=on_step)
        model = outcome.state.model
        return Trained(outcome.results, model, run_config(cfg), outcome.metrics, outcome)

    return train


def cached_run(cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> tuple[dict, str]:
    """(results, "cache" | "run"): an identical training is reused, otherwise trained and
    kept — once, when several processes want it at the same time."""
    found = get_or_train(runs_entry(cfg), _train(cfg, on_step), on_step=on_step)
    return found.results, found.source


def stl_baseline(
    cfg: TrainConfig, on_step: Callable[[int], None] | None = None
) -> tuple[dict, str]:
    """(STL results, "cache" | "run") for the budget and seed of `cfg`."""
    return cached_run(stl_config(cfg), on_step)


def trained_model(
    cfg: TrainConfig,
    tasks: list[str] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[MultiTaskModel, dict[str, TaskData], dict, str]:
    """(model, data, results, "cache" | "run") of the training `cfg`, trained once and kept.

    The model gets a head for each of `tasks` (default: the tasks `cfg` trains); heads the
    training did not have keep their seeded initialisation.
    """
    validate(cfg)
    device = resolve_device(cfg.device)
    own = trained_tasks(cfg)
    tasks = list(dict.fromkeys(own + list(tasks or [])))
    found = get_or_train(
        runs_entry(cfg), _train(cfg, on_step), with_model=True, map_location=device,
        on_step=on_step,
    )  # fmt: skip
    data = benchmark_of(cfg).load(tasks, device)
    model = build_model(cfg, data, device)
    load_weights(model, found.state, own)
    return model, data, found.results, found.source


def cached_forkmerge(
    cfg: TrainConfig,
    branches: list[BranchSpec],
    opts: ForkMergeOptions,
    on_step: Callable[[int], None] | None = None,
) -> tuple[dict, str]:
    """(results, "cache" | "run"): an identical ForkMerge run is reused, otherwise run and
    kept (once, when several processes want it at the same time)."""
    from ntlab.core.forkmerge import run_forkmerge  # forkmerge.py re-exports this module's names

    def train() -> Trained:
        outcome = run_forkmerge(cfg, branches, opts, on_step=on_step)
        described = [b.describe() for b in branches]
        config = {"train": asdict(cfg), "branches": described, **asdict(opts)}
        return Trained(outcome.results, outcome.model, config, None, outcome)

    found = get_or_train(forkmerge_entry(cfg, branches, opts), train, on_step=on_step)
    return found.results, found.source


def validation_curve(cfg: TrainConfig) -> list[dict]:
    """The target's validation accuracy against the step of the cached training `cfg`, as
    tidy metric rows (empty where the entry has no curve, e.g. none is cached)."""
    path = run_cache_dir(cfg) / METRICS_FILE
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []
    metric = (cached_results(cfg) or {}).get("metric", "acc")  # the target's primary metric
    curve = []
    for row in rows:
        if (row.get("task"), row.get("split"), row.get("metric")) != (cfg.target, "val", metric):
            continue
        try:
            curve.append({**row, "step": int(row["step"]), "value": float(row["value"])})
        except (KeyError, TypeError, ValueError):
            return []  # a damaged file: no curve rather than a wrong one
    return sorted(curve, key=lambda r: r["step"])


def stl_curve_csv(cfg: TrainConfig) -> str | None:
    """The validation curve of the STL baseline of `cfg` (cached), as the CSV a run keeps
    beside its own metrics.csv; None where the cache entry has no curve."""
    curve = validation_curve(stl_config(cfg))
    return metrics_csv(curve) if curve else None


# --- upkeep: `ntlab cache info | verify | clear` ---------------------------------------------


@dataclass
class Item:
    """A path in the cache: an entry, an entry set aside, a temporary folder or a lock."""

    kind: str
    path: Path
    size: int
    mtime: float
    lock: LockState | None = None  # for a lock file

    def age_days(self, now: float) -> float:
        return (now - self.mtime) / 86400

    @property
    def key(self) -> str:
        name = self.path.name
        found = LOCK_NAME.match(name) or TEMP_NAME.match(name)
        return found["key"] if found else name


@dataclass
class CacheScan:
    root: Path
    entries: list[Item] = field(default_factory=list)
    broken: list[Item] = field(default_factory=list)
    leftovers: list[Item] = field(default_factory=list)  # temporary folders of dead stores
    in_progress: list[Item] = field(default_factory=list)  # temporary folders being filled
    claims: list[Item] = field(default_factory=list)  # locks of live owners: trainings under way
    stale_locks: list[Item] = field(default_factory=list)  # locks no live process holds
    size: int = 0  # everything under root, loose files included

    def kinds(self) -> dict[str, list[Item]]:
        out: dict[str, list[Item]] = {}
        for item in self.entries:
            out.setdefault(item.kind, []).append(item)
        return out

    def claimed(self, item: Item) -> bool:
        """Whether a live process claims the key of `item` (it is being trained now)."""
        return any(c.kind == item.kind and c.key == item.key for c in self.claims)


def _measure(kind: str, path: Path) -> Item:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    stats = [p.stat() for p in files]
    size = sum(s.st_size for s in stats)
    mtime = max([s.st_mtime for s in stats] or [path.stat().st_mtime])
    return Item(kind, path, size, mtime)


def scan(root: Path | None = None, now: float | None = None) -> CacheScan:
    """Every entry of the cache by kind, the entries set aside, temporary folders, and the
    locks (of live owners, and stale)."""
    root = Path(root or runs_cache_dir())
    now = time.time() if now is None else now
    out = CacheScan(root)
    if not root.is_dir():
        return out
    temps = []
    for kind_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(kind_dir.iterdir()):
            try:
                if path.is_file() and LOCK_NAME.match(path.name):
                    state = inspect_lock(path, now)
                    if state is None:
                        continue  # released as we looked
                    item = Item(kind_dir.name, path, path.stat().st_size, state.mtime_ns / 1e9)
                    item.lock = state
                    (out.claims if state.stale is None else out.stale_locks).append(item)
                    continue
                if path.is_file() and ASIDE_NAME.match(path.name):
                    out.stale_locks.append(_measure(kind_dir.name, path))
                    continue
                if not path.is_dir():
                    continue
                item = _measure(kind_dir.name, path)
            except FileNotFoundError:
                continue  # a store or a release finished as we looked
            if kind_dir.name == BROKEN:
                out.broken.append(item)
            elif TEMP_NAME.match(path.name):
                temps.append(item)
            elif not path.name.startswith("."):
                out.entries.append(item)
    for item in temps:
        young = now - item.mtime < LEFTOVER_AGE_S
        (out.in_progress if young or out.claimed(item) else out.leftovers).append(item)
    out.size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return out


def _same_file(path: Path, seen: LockState) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return (st.st_ino, st.st_mtime_ns) == (seen.ino, seen.mtime_ns)


def remove(items: list[Item]) -> list[Item]:
    """Delete the folders (or lock files) of `items`; those already gone are skipped."""
    removed = []
    for item in items:
        if item.lock is not None and not _same_file(item.path, item.lock):
            continue  # taken over (or released) since the scan: no longer the stale lock
        try:
            if item.path.is_dir():
                shutil.rmtree(item.path)
            else:
                item.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise NtlabError(
                f"could not remove {item.path}: {exc.strerror or exc}; check its permissions"
            ) from None
        removed.append(item)
    return removed


def to_clear(
    found: CacheScan, older_than_days: float | None, now: float | None = None
) -> list[Item]:
    """What `ntlab cache clear` removes: every entry (or those stored more than
    `older_than_days` days ago) but those a live process claims, and always the entries set
    aside, leftover temporary folders and stale locks. Temporary folders of a store still
    running and the locks of live owners are left alone."""
    now = time.time() if now is None else now
    entries = [
        e
        for e in found.entries
        if (older_than_days is None or e.age_days(now) > older_than_days) and not found.claimed(e)
    ]
    return entries + found.broken + found.leftovers + found.stale_locks


def human_size(n: int) -> str:
    """Bytes in decimal units: `512 B`, `12.3 kB`, `4.5 MB`, `1.2 GB`."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
