"""A private NTLAB_HOME for cache tests: its own cache, the session's tiny data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def private_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point NTLAB_HOME at a fresh folder whose datasets/ is the prepared tiny data, so
    that a test sees only the cache entries it makes."""
    shared = Path(os.environ["NTLAB_HOME"])
    home = tmp_path / "home"
    home.mkdir()
    (home / "datasets").symlink_to(shared / "datasets", target_is_directory=True)
    monkeypatch.setenv("NTLAB_HOME", str(home))
    return home
