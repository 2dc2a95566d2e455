"""Where ntlab keeps its data and caches (NTLAB_HOME, default ~/.cache/ntlab)."""

from __future__ import annotations

import os
from pathlib import Path


def ntlab_home() -> Path:
    """The root of ntlab's cache: datasets, downloads and reusable baseline runs."""
    return Path(os.environ.get("NTLAB_HOME") or Path.home() / ".cache" / "ntlab").expanduser()


def datasets_dir() -> Path:
    return ntlab_home() / "datasets"


def downloads_dir() -> Path:
    return ntlab_home() / "downloads"


def runs_cache_dir() -> Path:
    return ntlab_home() / "cache"
