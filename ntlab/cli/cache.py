"""`ntlab cache`: where the run cache is and what it holds; check it; clear it."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Annotated

import typer

from ntlab.cli.common import console, die, guarded, results_table

if TYPE_CHECKING:
    from ntlab.core import cache

app = typer.Typer(
    help="The run cache (NTLAB_HOME/cache): every training ntlab ran, reused by identical "
    "configs. `info` shows it, `verify` reads every entry, `clear` removes entries.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
KINDS = ("runs", "forkmerge", "affinity")  # always listed, even when empty


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _size(items: list[cache.Item]) -> str:
    from ntlab.core import cache

    return cache.human_size(sum(i.size for i in items))


def _lock_line(item: cache.Item) -> str:
    """`stale lock: <path> (pid 1234, its process no longer runs)`."""
    state = item.lock
    if state is None:  # a lock a takeover moved aside and did not remove
        return f"stale lock: {item.path} (left by a takeover)"
    who = state.owner.describe() if state.owner else "owner unknown"
    return f"stale lock: {item.path} ({who}, {state.stale})"


@app.command("info")
def info() -> None:
    """Where the cache is, its entries per kind (runs/, forkmerge/, …) and their size.

    Also counts the entries set aside as damaged (broken/), temporary folders left by
    stores that did not finish, the trainings under way (keys claimed by a live process)
    and stale locks (claims whose process is gone); `ntlab cache clear` removes the
    damaged entries, the leftovers and the stale locks.
    """
    from ntlab.core import cache

    with guarded():
        found = cache.scan()
        console.print(f"cache: {found.root}", soft_wrap=True, highlight=False)
        table = results_table("", ["kind", "entries", "size"], left=("kind",))
        kinds = found.kinds()
        for kind in dict.fromkeys([*KINDS, *kinds]):
            items = kinds.get(kind, [])
            table.add_row(f"{kind}/", str(len(items)), _size(items))
        if found.broken:
            table.add_row(
                f"{cache.BROKEN}/ (damaged, set aside)", str(len(found.broken)), _size(found.broken)
            )
        if found.leftovers:
            table.add_row(
                "leftover temporary folders", str(len(found.leftovers)), _size(found.leftovers)
            )
        if found.in_progress:
            table.add_row(
                "being written now", str(len(found.in_progress)), _size(found.in_progress)
            )
        if found.claims:
            table.add_row("being trained now (claimed)", str(len(found.claims)), "")
        if found.stale_locks:
            table.add_row("stale locks", str(len(found.stale_locks)), _size(found.stale_locks))
        table.add_row("total", str(len(found.entries)), cache.human_size(found.size))
        console.print(table)
        for item in found.leftovers:
            console.print(f"leftover: {item.path}", soft_wrap=True, highlight=False)
        for item in found.stale_locks:
            console.print(_lock_line(item), soft_wrap=True, highlight=False)
        for item in found.claims:
            state = item.lock
            who = state.owner.describe() if state and state.owner else "a process starting"
            what = f" ({state.owner.what})" if state and state.owner and state.owner.what else ""
            console.print(
                f"being trained: {item.kind}/{item.key}{what} by {who}",
                soft_wrap=True,
                highlight=False,
            )


@app.command("verify")
def verify(
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Move the damaged entries into broken/ (as a run does when it meets one).",
        ),
    ] = False,
) -> None:
    """Read every entry (results.json and config.json parse as objects, model.pt loads) and
    list the damaged ones, one line each.

    Exit code 0 when every entry reads, 1 when any is damaged. A damaged entry does no
    harm: a command that needs it sets it aside and trains it again.
    """
    from ntlab.core import cache

    with guarded():
        found = cache.scan()
        damaged = 0
        for item in found.entries:
            problem = cache.check_entry(item.path)
            if problem is None:
                continue
            damaged += 1
            console.print(
                f"damaged: {item.path} ({problem.path.name}: {problem.reason})",
                soft_wrap=True,
                highlight=False,
            )
            if fix:
                moved = cache.set_aside(item.path, problem, say=False)
                console.print(f"  moved to {moved}", soft_wrap=True, highlight=False)
        for item in found.leftovers:
            console.print(
                f"leftover temporary folder: {item.path}", soft_wrap=True, highlight=False
            )
        for item in found.stale_locks:
            console.print(_lock_line(item), soft_wrap=True, highlight=False)
        entries = _count(len(found.entries), "entry", "entries")
        summary = f"{entries} read in {found.root}: {damaged} damaged"
        if found.broken:
            summary += f"; {len(found.broken)} set aside earlier in {cache.BROKEN}/"
        console.print(summary, soft_wrap=True, highlight=False)
        if damaged and not fix:
            console.print(
                "a command that needs a damaged entry trains it again; "
                "`ntlab cache verify --fix` sets them aside, `ntlab cache clear --broken` "
                "removes what is set aside"
            )
        if damaged:
            raise typer.Exit(1)


@app.command("clear")
def clear(
    older_than: Annotated[
        float | None,
        typer.Option(
            "--older-than",
            metavar="DAYS",
            help="Remove only the entries stored more than DAYS days ago.",
            show_default=False,
        ),
    ] = None,
    broken: Annotated[
        bool,
        typer.Option(
            "--broken",
            help="Remove only the damaged entries set aside, the leftover temporary folders "
            "and stale locks.",
        ),
    ] = False,
) -> None:
    """Remove cache entries: all of them, or those older than --older-than DAYS.

    The damaged entries set aside (broken/), temporary folders left by stores that did
    not finish and stale locks (claims whose process is gone) are removed in every case; a
    key being trained now (claimed by a live process) is left alone — its lock, its store
    and its entry. No confirmation is asked: a removed training is run again when a command
    needs it.
    """
    from ntlab.core import cache

    with guarded():
        if older_than is not None and not (math.isfinite(older_than) and older_than >= 0):
            die(f"--older-than must be a number of days ≥ 0, got {older_than}")
        if broken and older_than is not None:
            die("--broken and --older-than exclude each other; give one of them")
        found = cache.scan()
        now = time.time()
        items = cache.to_clear(found, older_than, now)
        if broken:
            items = found.broken + found.leftovers + found.stale_locks
        removed = cache.remove(items)
        groups: dict[str, list[cache.Item]] = {}
        for item in removed:
            if item in found.leftovers:
                key = "leftover"
            elif item in found.stale_locks:
                key = "lock"
            else:
                key = item.kind
            groups.setdefault(key, []).append(item)
        for key, group in groups.items():
            if key == "leftover":
                what = _count(len(group), "leftover temporary folder")
            elif key == "lock":
                what = _count(len(group), "stale lock")
            elif key == cache.BROKEN:
                what = _count(len(group), "damaged entry", "damaged entries")
                what += f" set aside in {cache.BROKEN}/"
            else:
                what = _count(len(group), "entry", "entries") + f" from {key}/"
            console.print(f"removed {what} ({_size(group)})", highlight=False)
        kept = len(found.entries) - sum(1 for i in removed if i in found.entries)
        console.print(
            f"freed {_size(removed)} in {found.root}; {_count(kept, 'entry', 'entries')} kept",
            soft_wrap=True,
            highlight=False,
        )
        if found.in_progress:
            console.print(
                f"left {_count(len(found.in_progress), 'temporary folder')} of stores "
                "still being written",
                highlight=False,
            )
        busy = [e for e in found.entries if found.claimed(e)]
        if busy and not broken:
            console.print(
                f"skipped {_count(len(busy), 'entry', 'entries')} claimed by a live process",
                highlight=False,
            )
        if found.claims:
            console.print(
                f"left {_count(len(found.claims), 'training')} under way (claimed by a live "
                "process: `ntlab cache info` names them)",
                highlight=False,
            )
