"""Errors that end a command with exit code 2 and one readable line."""

from __future__ import annotations

import difflib
import zipfile
from collections.abc import Iterable
from pathlib import Path


class NtlabError(Exception):
    """A problem with the user's input or data: say what was wrong and how to fix it."""


class UnknownNameError(NtlabError):
    """A name that is not in a registry."""


class TrainingsFailed(NtlabError):
    """Some trainings of a command failed (the others finished): exit code 1, not 2, since
    the input was fine; the message names them and says how to retry."""

    exit_code = 1


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice `name` most likely misspells, if one is close enough (difflib's ratio ≥ 0.6,
    case ignored)."""
    names = list(choices)
    lowered = {c.lower(): c for c in names}
    if name.lower() in lowered:
        return lowered[name.lower()]
    found = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[found[0]] if found else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`did you mean 'mnist'? ` when a choice is close to `name`, else the empty string."""
    best = closest(name, choices)
    return f"did you mean {best!r}? " if best is not None else ""


def unknown_name(
    what: str, name: object, choices: Iterable[str], where: str = ""
) -> UnknownNameError:
    """The error for a name that is not one of `choices`: `unknown target 'mnsit'; did you
    mean 'mnist'? Choose one of: mnist, mnistm, …` (`where` follows the name: `in --branch
    'a=1'`)."""
    names = [str(c) for c in choices]
    hint = did_you_mean(str(name), names)
    listing = f"{'C' if hint else 'c'}hoose one of: {', '.join(names)}"
    place = f" {where}" if where else ""
    return UnknownNameError(f"unknown {what} {name!r}{place}; {hint}{listing}")


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
