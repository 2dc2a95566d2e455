"""Errors that end a command with exit code 2 and one readable line."""

from __future__ import annotations

import zipfile
from pathlib import Path


class NtlabError(Exception):
    """A problem with the user's input or data: say what was wrong and how to fix it."""


class UnknownNameError(NtlabError):
    """A name that is not in a registry."""


class NonFiniteError(NtlabError):
    """A training produced a non-finite loss or parameters (it diverged)."""


def torch_load_reason(path: str | Path, exc: BaseException) -> str:
    """Why `torch.load(path)` failed, in words (torch's own message is often empty, or
    pages long and advising an unsafe reload)."""
    path = Path(path)
    if path.stat().st_size == 0:
        return "the file is empty"
    with path.open("rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        return "it is not a file written by torch.save"
    text = str(exc).strip()
    if "Weights only load failed" in text:
        return "it holds objects other than tensors, which ntlab does not load"
    first = text.splitlines()[0] if text else ""
    return first or f"{type(exc).__name__} (the file may be cut short)"
