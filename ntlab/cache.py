"""The run cache (NTLAB_HOME/cache): the code's identity in every key, reading an entry
(a damaged one is set aside, so that its training runs again), and `ntlab cache`'s upkeep.

Layout: one folder per kind (`runs/`, `forkmerge/`), one entry per key inside it
(`results.json`, `config.json`, `model.pt`); an entry is filled under a temporary name
(`.<key>.<pid>.<ns>`) and renamed when complete. Entries found damaged are moved into
`broken/`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ntlab.errors import NtlabError
from ntlab.paths import runs_cache_dir
from ntlab.storage import DamagedFileError, load_torch_file

# The sources whose content can change a trained number (the CLI, the report, presets —
# which resolve into the config — and the paths do not).
CODE_PARTS = ("core", "methods", "models", "data", "analysis", "metrics.py", "config.py")
ENTRY_FILES = ("results.json", "config.json", "model.pt")
BROKEN = "broken"
LEFTOVER_AGE_S = 600  # a temporary folder older than this belongs to no running store
TEMP_NAME = re.compile(r"^\..+\.\d+\.\d+$")
RETRAIN = "it is trained again when needed"


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
    a method, the merge, the search or the data code changes every cache key."""
    return source_digest(importlib.resources.files("ntlab"))


def warn(message: str) -> None:
    """One line on stderr (the core does not import the command line's console)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --- reading an entry ---------------------------------------------------------------------


def read_json_object(path: Path, fix: str = RETRAIN) -> dict:
    """A JSON file that must hold an object; DamagedFileError naming it otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DamagedFileError(path, "the file is missing", fix) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        empty = path.is_file() and path.stat().st_size == 0
        reason = "empty file" if empty else f"not valid JSON: {exc}"
        raise DamagedFileError(path, reason, fix) from None
    if not isinstance(data, dict):
        raise DamagedFileError(path, f"a JSON {type(data).__name__}, not an object", fix)
    return data


def entry_results(folder: Path) -> dict | None:
    """The results of the cache entry `folder`, or None when there is none. A damaged
    entry is set aside (one warning line) and reads as none: its training runs again."""
    if not folder.exists():
        return None
    try:
        return read_json_object(folder / "results.json")
    except DamagedFileError as exc:
        set_aside(folder, exc)
        return None


def entry_model(folder: Path, map_location: Any) -> tuple[dict, dict] | None:
    """(results, model state) of the cache entry `folder`, or None (set aside if damaged)."""
    if not folder.exists():
        return None
    try:
        results = read_json_object(folder / "results.json")
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


# --- upkeep: `ntlab cache info | verify | clear` ---------------------------------------------


@dataclass
class Item:
    """A folder in the cache: an entry, an entry set aside, or a leftover temporary folder."""

    kind: str
    path: Path
    size: int
    mtime: float

    def age_days(self, now: float) -> float:
        return (now - self.mtime) / 86400


@dataclass
class CacheScan:
    root: Path
    entries: list[Item] = field(default_factory=list)
    broken: list[Item] = field(default_factory=list)
    leftovers: list[Item] = field(default_factory=list)  # temporary folders of dead stores
    in_progress: list[Item] = field(default_factory=list)  # temporary folders being filled
    size: int = 0  # everything under root, loose files included

    def kinds(self) -> dict[str, list[Item]]:
        out: dict[str, list[Item]] = {}
        for item in self.entries:
            out.setdefault(item.kind, []).append(item)
        return out


def _measure(kind: str, path: Path) -> Item:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    stats = [p.stat() for p in files]
    size = sum(s.st_size for s in stats)
    mtime = max([s.st_mtime for s in stats] or [path.stat().st_mtime])
    return Item(kind, path, size, mtime)


def scan(root: Path | None = None, now: float | None = None) -> CacheScan:
    """Every entry of the cache by kind, the entries set aside, and temporary folders."""
    root = Path(root or runs_cache_dir())
    now = time.time() if now is None else now
    out = CacheScan(root)
    if not root.is_dir():
        return out
    for kind_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(kind_dir.iterdir()):
            if not path.is_dir():
                continue
            item = _measure(kind_dir.name, path)
            if kind_dir.name == BROKEN:
                out.broken.append(item)
            elif TEMP_NAME.match(path.name):
                young = now - item.mtime < LEFTOVER_AGE_S
                (out.in_progress if young else out.leftovers).append(item)
            elif not path.name.startswith("."):
                out.entries.append(item)
    out.size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return out


def check_entry(path: Path) -> DamagedFileError | None:
    """The first damaged file of a cache entry, or None when every file reads."""
    try:
        read_json_object(path / "results.json")
        read_json_object(path / "config.json")
        state = load_torch_file(path / "model.pt", RETRAIN)
        if not isinstance(state, dict):
            raise DamagedFileError(path / "model.pt", "not a model state", RETRAIN)
    except DamagedFileError as exc:
        return exc
    return None


def remove(items: list[Item]) -> list[Item]:
    """Delete the folders of `items`; those already gone are skipped."""
    removed = []
    for item in items:
        try:
            shutil.rmtree(item.path)
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
    `older_than_days` days ago), and always the entries set aside and leftover temporary
    folders. Temporary folders of a store still running are left alone."""
    now = time.time() if now is None else now
    entries = [
        e for e in found.entries if older_than_days is None or e.age_days(now) > older_than_days
    ]
    return entries + found.broken + found.leftovers


def human_size(n: int) -> str:
    """Bytes in decimal units: `512 B`, `12.3 kB`, `4.5 MB`, `1.2 GB`."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
