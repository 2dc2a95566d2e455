"""Where ntlab keeps its data and caches (NTLAB_HOME, default ~/.cache/ntlab)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_CACHE_OVERRIDE: list[Path] = []  # the Python API's private run caches, innermost last


def ntlab_home() -> Path:
    """The root of ntlab's cache: datasets, downloads and reusable baseline runs."""
    return Path(os.environ.get("NTLAB_HOME") or Path.home() / ".cache" / "ntlab").expanduser()


def datasets_dir() -> Path:
    return ntlab_home() / "datasets"


def downloads_dir() -> Path:
    return ntlab_home() / "downloads"


def runs_cache_dir() -> Path:
    return _CACHE_OVERRIDE[-1] if _CACHE_OVERRIDE else ntlab_home() / "cache"


@contextlib.contextmanager
def cache_override(folder: Path) -> Iterator[Path]:
    """Within the block, trainings are cached in `folder` instead of NTLAB_HOME/cache."""
    _CACHE_OVERRIDE.append(Path(folder))
    try:
        yield Path(folder)
    finally:
        _CACHE_OVERRIDE.pop()
