"""The run directory: config, status, tidy tables and results, all written atomically."""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ntlab import __version__
from ntlab.errors import NtlabError

if TYPE_CHECKING:
    import pandas as pd


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file beside `path`, then rename: readers never see half a file.

    A write that fails (full disk, no permission) leaves no temp file and raises NtlabError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise write_failed(path, exc) from None


def write_failed(path: Path, exc: OSError) -> NtlabError:
    """The one-line error for a write that failed, with what to do about it."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)):
        fix = "free some space (or set NTLAB_HOME / --out to another disk) and run again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "check that the folder is writable, or choose another --out / NTLAB_HOME"
    else:
        fix = "check the disk and run again"
    return NtlabError(f"could not write {path}: {reason}; {fix}")


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (no NaN or Infinity, which JSON does not have), written atomically; a
    non-finite number is a bug upstream, named by its key."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=False, default=str, allow_nan=False)
    except ValueError:
        found = _non_finite(obj)
        if found is None:
            raise
        raise NtlabError(
            f"{Path(path).name}: {found[0]} is {found[1]}, which JSON cannot hold; "
            "this is a bug in ntlab, please report it"
        ) from None
    atomic_write_text(path, text + "\n")


def _non_finite(obj: Any, key: str = "") -> tuple[str, float] | None:
    """(the dotted key, the value) of the first NaN or ±inf in `obj`, if any."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (key or "the value", obj)
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list | tuple):
        items = list(enumerate(obj))
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{key}.{k}" if key else str(k))
        if found:
            return found
    return None


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object; a damaged one is named, with `fix` (what to do)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NtlabError(f"{path} is damaged ({_reason(exc)}); {fix}") from None
    if not isinstance(value, dict):
        raise NtlabError(
            f"{path} is damaged (it holds a JSON {type(value).__name__}, not an object); {fix}"
        )
    return value


def _reason(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    return str(exc) or type(exc).__name__


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_description() -> str:
    """The hardware a run could use: the GPU's name, or the CPU and torch's thread count."""
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


_command_line: list[str] | None = None


def set_command_line(words: list[str] | None) -> None:
    """The command as the user gave it (set by the CLI once it has parsed the options)."""
    global _command_line
    _command_line = list(words) if words is not None else None


def environment() -> dict[str, Any]:
    import torch

    return {
        "ntlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_revision": git_revision(),
        "device": device_description(),
        "argv": sys.argv,
        "command_line": _command_line,
    }


LOCK_FILE = ".lock"
RUN_MARKERS = ("config.json", "status.json")  # what makes a folder an ntlab run folder


def note(message: str) -> None:
    """One line on stderr that does not stop the command."""
    print(f"note: {message}", file=sys.stderr)


class RunLock:
    """`<out>/.lock`: the folder is claimed by one run at a time.

    The claim is an exclusive `flock` on the file, which the kernel drops when the process
    ends however it ends (SIGKILL included), so a lock left by a dead run never blocks; the
    file's content (pid, host, start, command) only says who holds it.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fh = None

    def acquire(self) -> None:
        while True:
            try:
                fh = open(self.path, "a+")  # noqa: SIM115 - held open for the run's lifetime
            except OSError as exc:
                raise NtlabError(
                    f"cannot claim {self.path.parent} for the run ({exc.strerror or exc}); "
                    "choose a folder you can write to"
                ) from None
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fh)
                fh.close()
                raise NtlabError(
                    f"{self.path.parent} is in use by another ntlab run ({_describe(holder)}); "
                    "choose another --out or wait until it ends"
                ) from None
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()  # the holder removed the file as we opened it: claim the new one
        previous = _read_holder(fh)
        if previous.get("pid") not in (None, os.getpid()):  # its process no longer holds it
            note(
                f"took over the lock of {self.path.parent} left by a run that ended without "
                f"releasing it ({_describe(previous)})"
            )
        fh.seek(0)
        fh.truncate()
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": now(),
            "command": _command_line or sys.argv,
        }
        fh.write(json.dumps(holder) + "\n")
        fh.flush()
        self._fh = fh
        _held.add(self)

    def release(self) -> None:
        """Remove the file, then drop the claim (a waiting run re-checks which file it holds)."""
        if self._fh is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        self._fh.close()
        self._fh = None
        _held.discard(self)

    @property
    def held(self) -> bool:
        return self._fh is not None


_held: set[RunLock] = set()


@atexit.register
def _release_all() -> None:
    for lock in list(_held):
        lock.release()


def _read_holder(fh) -> dict[str, Any]:
    try:
        fh.seek(0)
        value = json.loads(fh.read() or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "pid unknown"
    text = f"pid {holder['pid']}"
    if holder.get("host") and holder["host"] != socket.gethostname():
        text += f" on {holder['host']}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    return text


class RunDir:
    """One command's output folder (the README's run directory), claimed by this run to its end.

    A new run in a folder that holds an ntlab run replaces it: the folder is emptied, so it
    holds only the new run (a finished run is replaced only with `overwrite`). A folder with
    other files is never emptied. With `resume` nothing is removed: the run continues there.
    """

    def __init__(self, path: Path, overwrite: bool = False, resume: bool = False) -> None:
        self.path = Path(path)
        if overwrite and resume:
            raise NtlabError(
                "give --resume (continue the run) or --overwrite (replace it), not both"
            )
        if self.path.exists() and not self.path.is_dir():
            raise NtlabError(f"--out {self.path} is a file, not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.path)
        self.lock.acquire()
        try:
            self._prepare(overwrite, resume)
        except BaseException:
            self.lock.release()
            raise
        self.started = time.time()

    def _prepare(self, overwrite: bool, resume: bool) -> None:
        if resume:
            return
        if (self.path / "results.json").exists() and not overwrite:
            raise NtlabError(
                f"{self.path} already holds a finished run; "
                "choose another --out or pass --overwrite"
            )
        entries = [e for e in self.path.iterdir() if e.name != LOCK_FILE]
        if not entries:
            return
        if not any((self.path / m).is_file() for m in RUN_MARKERS):
            if overwrite:
                raise NtlabError(
                    f"--overwrite empties only ntlab run folders, and {self.path} holds other "
                    f"files (no {' or '.join(RUN_MARKERS)}); choose an empty or new --out"
                )
            return  # a folder of the user's own: add the run's files, remove nothing
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def release(self) -> None:
        self.lock.release()

    def start(self, command: str, config: dict[str, Any]) -> None:
        write_json(
            self.path / "config.json", {"command": command, **config, "environment": environment()}
        )
        write_json(
            self.path / "status.json", {"state": "running", "command": command, "started": now()}
        )

    def write_table(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.path / name
        atomic_write_text(path, frame.to_csv(index=False))
        return path

    def finish(self, results: dict[str, Any]) -> None:
        """Results last, then the status: a completed status always has its results."""
        duration = round(time.time() - self.started, 3)
        write_json(self.path / "results.json", {**results, "duration_s": duration})
        write_json(
            self.path / "status.json",
            {
                "state": "completed",
                "started": self._started_iso(),
                "finished": now(),
                "duration_s": duration,
            },
        )

    def fail(self, error: str) -> None:
        write_json(
            self.path / "status.json",
            {"state": "failed", "error": error, "started": self._started_iso(), "finished": now()},
        )

    def _started_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started))
