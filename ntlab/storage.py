"""ntlab's own torch files on disk: written atomically, read with a damaged file named."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ntlab.errors import NtlabError
from ntlab.runs import write_failed


class DamagedFileError(NtlabError):
    """A file ntlab wrote earlier cannot be read back (truncated, empty, not what it should be)."""

    def __init__(self, path: Path, reason: str, fix: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is damaged ({reason}); {fix}")


def load_torch_file(path: Path, fix: str, map_location: str | torch.device | None = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; a file that does not load raises
    DamagedFileError naming it and saying what to do (`fix`).

    torch reports an empty file as EOFError, which the command line would otherwise take for
    an interrupt (click maps EOFError to "aborted"), and a truncated one as a RuntimeError.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DamagedFileError(path, "the file is missing", fix) from None
    except Exception as exc:  # noqa: BLE001 - any failure to load means the file is unusable
        empty = Path(path).is_file() and Path(path).stat().st_size == 0
        raise DamagedFileError(path, "empty file" if empty else short_reason(exc), fix) from None


def read_json_object(path: Path, fix: str) -> dict:
    """A JSON file that must hold an object; DamagedFileError naming it otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DamagedFileError(path, "the file is missing", fix) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        empty = path.is_file() and path.stat().st_size == 0
        reason = "empty file" if empty else f"not valid JSON: {exc}"
        raise DamagedFileError(path, reason, fix) from None
    if not isinstance(data, dict):
        raise DamagedFileError(path, f"a JSON {type(data).__name__}, not an object", fix)
    return data


def save_torch_file(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary file beside `path`, then rename; a write that fails
    removes the temporary file and raises NtlabError naming `path` and the reason."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        # torch wraps the OSError of a failed write (full disk) in a RuntimeError
        cause = exc if isinstance(exc, OSError) else exc.__cause__ or exc.__context__
        if isinstance(cause, OSError):
            raise write_failed(path, cause) from None
        raise NtlabError(f"could not write {path}: {short_reason(exc)}") from None


def short_reason(exc: BaseException) -> str:
    """The first line of an exception's message, without torch's long advice."""
    if isinstance(exc, KeyError) and exc.args:
        return f"it has no {exc.args[0]!r}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text.split(". This is an internal")[0].removeprefix("PytorchStreamReader ")
    return text or type(exc).__name__


def prepared_manifest(manifest: dict | None, name: str, root: Path, version: int) -> dict:
    """A generated benchmark's manifest as its loader needs it: there, and of the format this
    ntlab reads (`ntlab data prepare NAME` builds it, or rebuilds one of another format)."""
    if manifest is None:
        raise NtlabError(f"the {name} benchmark is not prepared; run `ntlab data prepare {name}`")
    if manifest.get("format") != version:
        raise NtlabError(
            f"the {name} in {root} were built by another version of ntlab (format "
            f"{manifest.get('format')}, this one reads {version}); "
            f"run `ntlab data prepare {name}` to rebuild them"
        )
    return manifest


def same_build(manifest: dict | None, **expected: Any) -> bool:
    """Whether an existing build's manifest records every one of these values (the format,
    the config's fingerprint...): with `sizes_match`, whether `prepare` may reuse it."""
    return manifest is not None and all(manifest.get(k) == v for k, v in expected.items())


def sizes_match(root: Path, sizes: dict[str, int]) -> bool:
    """Whether every file named in `sizes` (relative to `root`) is there with the size its
    build recorded: the cheap check that an existing data build may be reused."""
    return all(
        (root / rel).is_file() and (root / rel).stat().st_size == size
        for rel, size in sizes.items()
    )


@contextlib.contextmanager
def building_folder(root: Path, name: str) -> Iterator[Path]:
    """A fresh folder beside `root` to build a data set in. When the block ends without an
    error the build replaces `root` in two renames (readers see the old build or the new
    one, never half of one); either way nothing temporary is left."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{name}-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        yield tmp
        old = root.parent / f".{name}-old-{os.getpid()}-{time.time_ns()}"
        if root.exists():
            root.rename(old)
        tmp.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
