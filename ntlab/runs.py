"""The run directory: config, status, tidy tables and results, all written atomically."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ntlab import __version__
from ntlab.errors import NtlabError


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


class RunDir:
    """One command's output folder (DESIGN.md §4)."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        self.path = Path(path)
        if (self.path / "results.json").exists() and not overwrite:
            raise NtlabError(
                f"{self.path} already holds a finished run; "
                "choose another --out or pass --overwrite"
            )
        if self.path.exists() and not self.path.is_dir():
            raise NtlabError(f"--out {self.path} is a file, not a folder")
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in ("results.json", "status.json"):
            (self.path / stale).unlink(missing_ok=True)
        self.started = time.time()

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
