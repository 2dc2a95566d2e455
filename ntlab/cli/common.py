"""What every command shares: one-line errors, option resolution, progress and tables."""

from __future__ import annotations

import inspect
import json
import os
import re
import time
import tomllib
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ntlab.checks import check_seed
from ntlab.errors import NtlabError, unknown_name
from ntlab.presets import DEFAULT_PRESET, FOLLOW_STEPS, PRESETS, preset_value
from ntlab.runs import RunDir, atomic_write_text, read_json_object, set_command_line

if TYPE_CHECKING:
    import pandas as pd

console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

EXPLICIT = {"COMMANDLINE", "ENVIRONMENT"}  # parameter sources the user typed or exported


def die(message: str, code: int = 2) -> None:
    """End the command with one line on stderr (no traceback)."""
    err_console.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


@contextmanager
def guarded(run: RunDir | None = None) -> Iterator[None]:
    """Turn input errors into exit 2 and record any failure in the run's status.json."""
    try:
        yield
    except NtlabError as exc:
        code = getattr(exc, "exit_code", 2)  # 2: bad input; failed trainings, a lost rank: 1
        if getattr(exc, "quiet", False):  # another process (torchrun's rank 0) says it
            raise typer.Exit(code) from None
        message = describe_origins(str(exc))
        _fail(run, message)
        die(message, code)
    except KeyboardInterrupt:
        _fail(run, "interrupted")
        die("interrupted", code=130)
    except EOFError as exc:  # a truncated file; click would report it as "aborted"
        message = f"a file ended early, it is damaged ({exc}); rebuild or replace it"
        _fail(run, message)
        die(message)
    except typer.Exit:
        raise
    except Exception as exc:
        _fail(run, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if run is not None:
            run.release()


def _fail(run: RunDir | None, error: str) -> None:
    """Record the failure, then render what the run left so far (the report says it failed)."""
    if run is None:
        return
    try:
        run.fail(error)
    except NtlabError:  # a full disk: the run's own error is the one to report
        return
    try:  # the import too: a SIGTERM (torchrun's) may have broken a module mid-import
        from ntlab.report.page import write_run_report

        write_run_report(run.path)
    except Exception:  # noqa: BLE001 - the run's own error is the one to report
        pass


def complete(run: RunDir, results: dict[str, Any], fmt: str = "png") -> Path:
    """End a run: its figures, then results.json (the run is complete), then report.html.

    Figures come from the run's tables through the same views `ntlab report` uses.
    """
    from ntlab.report.page import save_figures, write_run_report
    from ntlab.report.views import Run

    save_figures(Run.live(run.path, results), fmt)
    run.finish(results)
    return write_run_report(run.path, fmt)


def print_paths(path: Path) -> None:
    """The run directory and its report, each on one unbroken line (to copy or click)."""
    console.print(f"run directory: {path}", soft_wrap=True, highlight=False)
    console.print(f"report: {Path(path) / 'report.html'}", soft_wrap=True, highlight=False)


# Options without a default: given on the command line or in --config, checked once resolved.
REQUIRED = {"target": "the target task"}


def load_config_file(path: Path | None) -> dict[str, Any]:
    """A --config file as read: TOML (keys spelled with - or _), tables kept as tables."""
    if path is None:
        return {}
    if not path.is_file():
        raise NtlabError(f"--config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise NtlabError(f"--config file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NtlabError(f"--config file {path} cannot be read ({exc})") from None
    return _underscored(data)


def _underscored(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k.replace("-", "_"): _underscored(v) if isinstance(v, dict) else v for k, v in data.items()
    }


def _option_keys(command: Any) -> dict[str, str]:
    """The keys a --config file may give `command`: its options by parameter name and by
    long spelling (`from_run` and `from` for `--from`), each → the parameter name."""
    keys = {}
    for param in command.params:
        if param.name is None or param.name == "config":
            continue
        keys[param.name] = param.name
        for spelling in param.opts:
            if spelling.startswith("--"):
                keys.setdefault(spelling[2:].replace("-", "_"), param.name)
    return keys


def _subcommands(group: Any, ctx: typer.Context) -> dict[str, Any]:
    if not hasattr(group, "list_commands"):  # a command, not a group
        return {}
    return {name: group.get_command(ctx, name) for name in group.list_commands(ctx)}


def _leaves(command: Any, ctx: typer.Context) -> list[Any]:
    subs = _subcommands(command, ctx)
    return [leaf for sub in subs.values() for leaf in _leaves(sub, ctx)] if subs else [command]


def config_for_command(ctx: typer.Context, path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The values a --config file gives this command, by parameter name.

    Top-level keys apply to every command; a table named after the command overrides them
    (`[train]`, `[pairwise]`; a subcommand's table sits in its group's: `[forkmerge.train]`,
    and `[forkmerge]` applies to every forkmerge subcommand). A key the command does not
    take is ignored where another command in the table's scope takes it (one file can serve
    several commands); a key no command there takes, or a table that names no command, is
    an error naming the file and the key."""
    names, c = [], ctx
    while c.parent is not None:
        names.insert(0, c.info_name)
        c = c.parent
    root = c.find_root()
    own = _option_keys(ctx.command)
    chosen: dict[str, Any] = {}

    def walk(table: dict[str, Any], scope: Any, where: list[str], on_path: bool) -> None:
        subs = _subcommands(scope, root)
        leaves = _leaves(scope, root)
        for key, value in table.items():
            location = ".".join([*where, key])
            if isinstance(value, dict):
                if key not in subs:
                    raise NtlabError(
                        f"--config file {path}: table [{location}] names no ntlab command"
                        + (f"; tables here: {', '.join(sorted(subs))}" if subs else "")
                    )
                depth = len(where)
                walk(value, subs[key], [*where, key], on_path and names[depth : depth + 1] == [key])
                continue
            if on_path and key in own:
                if len(where) >= chosen.get(own[key], (-1, None))[0]:  # a table wins
                    chosen[own[key]] = (len(where), value)
            elif not any(key in _option_keys(leaf) for leaf in leaves):
                option = "--" + key.replace("_", "-")
                if where and not subs:  # the table of one command
                    owner = f"`ntlab {' '.join(where)}` has no option {option}"
                else:
                    group = f"`ntlab {' '.join(where)}` subcommand" if where else "ntlab command"
                    owner = f"no {group} has an option {option}"
                raise NtlabError(
                    f"--config file {path}: unknown key {location!r} ({owner}; see "
                    f"`{' '.join(['ntlab', *names])} --help`)"
                )

    walk(data, root.command, [], True)
    return {name: value for name, (_, value) in chosen.items()}


def resolve_options(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """Built-in defaults < preset < --config file < options given on the command line.

    Preset values tied to the budget follow the resolved --steps (ntlab.presets). Where
    each value came from is kept for error messages (`describe_origins`), and the command
    line recorded for config.json and the report is the complete command, every resolved
    value inlined (no --config)."""
    from ntlab.report import check_format

    config = values.get("config")
    file_cfg = config_for_command(ctx, config, load_config_file(config)) if config else {}
    kinds = option_kinds(ctx)
    file_cfg = {k: config_value(config, k, v, *kinds[k]) for k, v in file_cfg.items()}

    def explicit(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name in EXPLICIT

    preset_name = (
        values.get("preset") if explicit("preset") else file_cfg.get("preset", values.get("preset"))
    )
    preset_name = preset_name or DEFAULT_PRESET
    if preset_name not in PRESETS:
        raise unknown_name("preset", preset_name, PRESETS)
    resolved, origins = {}, {}
    for name, value in values.items():
        if explicit(name):
            resolved[name], origins[name] = value, "typed"
        elif name in file_cfg:
            resolved[name], origins[name] = file_cfg[name], f"from {config}"
        elif value is None and name in FOLLOW_STEPS:
            resolved[name], origins[name] = None, "preset"  # once --steps is known
        elif value is None and preset_value(preset_name, name) is not None:
            resolved[name], origins[name] = preset_value(preset_name, name), "preset"
        else:
            resolved[name], origins[name] = value, "default"
    budget = resolved.get("steps", resolved.get("pretrain_steps"))
    for name in FOLLOW_STEPS:
        if name in resolved and resolved[name] is None:
            resolved[name] = preset_value(preset_name, name, budget)
            origins[name] = "default" if resolved[name] is None else "preset"
    resolved["preset"] = preset_name
    origins = {
        k: f"from --preset {preset_name}" if v == "preset" else v for k, v in origins.items()
    }
    set_origins(_origins_by_option(ctx, resolved, origins))
    for name, what in REQUIRED.items():
        if name in resolved and resolved[name] is None:
            raise NtlabError(
                f"missing option --{name.replace('_', '-')} ({what}; give it on the command "
                f"line or as `{name}` in --config)"
            )
    if resolved.get("out") is not None:
        check_out(Path(resolved["out"]))
    if "format" in resolved:
        check_format(resolved["format"])
    set_command_line(command_line(ctx, resolved, origins))
    return resolved


_origins: dict[str, tuple[Any, str]] = {}  # --option → (value, where it came from)


def set_origins(origins: dict[str, tuple[Any, str]] | None) -> None:
    """Where the values of this invocation's options came from (reset by every invocation)."""
    global _origins
    _origins = dict(origins or {})


def _origins_by_option(
    ctx: typer.Context, resolved: dict[str, Any], origins: dict[str, str]
) -> dict[str, tuple[Any, str]]:
    out = {}
    for param in ctx.command.params:
        if param.name not in origins or origins[param.name] == "typed":
            continue
        value = resolved.get(param.name)
        if value is None or isinstance(value, bool) or value == []:
            continue
        for spelling in param.opts:
            if spelling.startswith("--"):
                out[spelling] = (value, origins[param.name])
    return out


def describe_origins(message: str) -> str:
    """`message` with, for each option it names that the user did not type, its value and
    where it came from: `…; --merge-every 75 (from --preset quick)`."""
    known = _origins
    if not known:
        return message
    notes = []
    for spelling in dict.fromkeys(re.findall(r"--[a-z][a-z0-9-]*", message)):
        if spelling in known:
            value, origin = known[spelling]
            shown = ",".join(map(str, value)) if isinstance(value, list | tuple) else value
            note = f"{spelling} {shown} ({origin})"
            if note not in message:
                notes.append(note)
    return message + ("; " + ", ".join(notes) if notes else "")


def option_kinds(ctx: typer.Context) -> dict[str, tuple[type, bool]]:
    """Each option of the command: (its value type, whether it is repeatable), read from the
    command's signature (`int | None` → int, `list[str]` → str, repeatable)."""
    kinds = {}
    for name, param in inspect.signature(ctx.command.callback).parameters.items():
        kind = param.annotation
        if typing.get_origin(kind) is typing.Annotated:
            kind = typing.get_args(kind)[0]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        multiple = typing.get_origin(kind) is list
        if multiple:
            kind = typing.get_args(kind)[0]
        kinds[name] = (kind, multiple)
    return kinds


def config_value(path: Path, name: str, value: Any, kind: type | None, multiple: bool) -> Any:
    """A --config file's value as the option's type (TOML has its own types: `steps = "20"`
    is a string); a value of another type is the one-line error of that file and key."""
    if multiple:
        items = value if isinstance(value, list) else [value]
        return [config_value(path, name, v, kind, False) for v in items]

    def wrong(expected: str) -> NtlabError:
        return NtlabError(f"config file {path}: {name} must be {expected}, got {value!r}")

    if kind is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong("an integer")
    elif kind is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise wrong("a number")
        return float(value)
    elif kind is str and not isinstance(value, str):  # seeds = 0, aux = ["mnist", "syn"]
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in items):
            raise wrong("a string, a number or a list of them")
        return ",".join(str(v) for v in items)
    elif kind is str or kind is Path:
        if not isinstance(value, str):
            raise wrong("a string")
        return Path(value) if kind is Path else value
    return value


def check_out(path: Path) -> None:
    """--out must name a folder that can be made: not the current directory (a run's files
    would land among yours), not below a file."""
    if path == Path("."):
        raise NtlabError(
            "--out is empty or the current directory; name a folder for the run, "
            "e.g. --out runs/NAME"
        )
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NtlabError(f"--out {path}: {folder} is a file; choose another folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise NtlabError(f"--out {path}: cannot write in {folder}; choose another folder")
            return


def command_line(
    ctx: typer.Context,
    resolved: dict[str, Any] | None = None,
    origins: dict[str, str] | None = None,
) -> list[str]:
    """`ntlab SUBCOMMAND --option value …`: what a report shows under "command" and a user
    can re-run. With `resolved` values it is the complete command: every option typed, from
    the --config file or from the preset, in the command's option order, and no --config;
    options left at their built-in default are left out."""
    names, c = [], ctx
    while c.parent is not None:
        names.insert(0, c.info_name)
        c = c.parent
    words = ["ntlab", *names]
    for param in ctx.command.params:
        if resolved is None:
            source = ctx.get_parameter_source(param.name)
            if source is None or source.name != "COMMANDLINE":
                continue
            value = ctx.params.get(param.name)
        else:
            if param.name == "config" or (origins or {}).get(param.name, "default") == "default":
                continue
            value = resolved.get(param.name)
        if value is None:
            continue
        if getattr(param, "is_flag", False) and isinstance(value, bool):
            flags = param.opts if value else param.secondary_opts
            words += [max(flags, key=len)] if flags else []
            continue
        long = max(param.opts, key=len)
        for item in value if isinstance(value, list | tuple) else [value]:
            words += ([long] if param.param_type_name == "option" else []) + [str(item)]
    return words


def parse_numbers(text: str, option: str, kind: type = float) -> list:
    """`0,0.25,1` → [0.0, 0.25, 1.0]; a clear error naming the option otherwise."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise NtlabError(f"{option} is empty; give values separated by commas")
    try:
        return [kind(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not _parses(p, kind))
        noun = "an integer" if kind is int else "a number"
        raise NtlabError(f"{option}: {bad!r} is not {noun}") from None


def parse_seeds(text: str) -> list[int]:
    seeds = [check_seed("every seed in --seeds", s) for s in parse_numbers(text, "--seeds", int)]
    if len(set(seeds)) != len(seeds):
        raise NtlabError("--seeds lists a seed twice")
    return seeds


def check_resumable(
    path: Path | None, checkpoint: Path, record: dict, command: str, free: tuple[str, ...] = ()
) -> None:
    """--resume needs an unfinished run of `command` in `path` (--out), with its checkpoint,
    started with the same options (`record`, as config.json holds it; the keys in `free`,
    which do not change the numbers, may differ)."""
    if path is None:
        raise NtlabError("--resume needs --out FOLDER, the run directory of the run to continue")
    path = Path(path)
    if not (path / "config.json").is_file():
        raise NtlabError(f"nothing to resume in {path}: no ntlab run there; run without --resume")
    saved = read_json_object(path / "config.json", "run again without --resume to start over")
    if (path / "results.json").is_file():
        raise NtlabError(
            f"nothing to resume in {path}: the run is finished; "
            "pass --overwrite instead to run it again"
        )
    if not (path / checkpoint).is_file():
        raise NtlabError(
            f"nothing to resume in {path}: no part of the run finished ({checkpoint} is "
            "missing); run without --resume"
        )
    wanted = json.loads(json.dumps({"command": command, **record}, default=str))
    differ = [k for k, v in wanted.items() if k not in free and saved.get(k) != v]
    if differ:
        raise NtlabError(
            f"--resume with other options than the run in {path} (they differ in "
            f"{', '.join(differ)}); use the options it was started with"
        )


def resumed_rows(path: Path, checkpoint: Path, key: dict[str, type]) -> pd.DataFrame:
    """The finished parts of a run that --resume continues: `checkpoint` read back, its key
    columns (name → str, int or float) checked; a damaged file is named, with what to do."""
    import pandas as pd

    file = Path(path) / checkpoint
    fix = "run again without --resume to start over"
    try:
        frame = pd.read_csv(file)
    except pd.errors.EmptyDataError:
        raise NtlabError(f"{file} is damaged (it is empty); {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NtlabError(f"{file} is damaged ({reason}); {fix}") from None
    missing = [c for c in key if c not in frame.columns]
    if missing:
        raise NtlabError(f"{file} is damaged (no column {', '.join(missing)}); {fix}")
    for column, kind in key.items():
        values = frame[column]
        if kind is str:
            bad = values.isna()
        else:
            numbers = pd.to_numeric(values, errors="coerce")
            bad = numbers.isna() if kind is float else numbers.isna() | (numbers % 1 != 0)
            bad = bad & ~(values.isna() & (kind is float))  # float keys may be blank (n/a)
            frame[column] = numbers if kind is float else numbers.fillna(0).astype(int)
        if bad.any():
            raise NtlabError(
                f"{file} is damaged (column {column} has {values[bad].iloc[0]!r}); {fix}"
            )
    return frame


class CheckpointRows:
    """The finished parts of a run, one row each, written to `<run>/<file>` as each finishes;
    with `resume` the rows of the killed run are read back first (damage named)."""

    def __init__(self, run: RunDir, file: Path, key: dict[str, type], resume: bool) -> None:
        import pandas as pd

        self.path = run.path / file
        frame = resumed_rows(run.path, file, key) if resume else pd.DataFrame()
        self.rows: list[dict] = frame.to_dict("records")

    def add(self, row: dict) -> None:
        import pandas as pd

        self.rows.append(row)
        atomic_write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False))


def resume_note(done: int, total: int, quiet: bool, unit: str = "parts") -> None:
    if not quiet:
        console.print(f"resuming: {done} of {total} {unit} already finished, skipped")


def _parses(text: str, kind: type) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def preset_help(name: str) -> str:
    values = ", ".join(
        f"{p}: {preset_value(p, name)}" for p in PRESETS if preset_value(p, name) is not None
    )
    return f"[default: from --preset ({values})]"


def default_out(*parts: str) -> Path:
    return Path("runs") / ("-".join(parts) + "-" + time.strftime("%Y%m%d-%H%M%S"))


class StepProgress:
    """Progress on the terminal (silent when quiet): one bar per training while it trains,
    one line for a training that came from the cache, and for commands of several trainings
    an overall bar (`overall`) whose ETA comes from the durations of the parts that trained.

    A training's bar appears at its first step and goes once it is done. A callback that
    never saw a step by the time the next one is asked for (or the overall bar advances, or
    the progress ends) belonged to a training the run cache answered: it prints
    `DESCRIPTION: from cache` instead of leaving a bar at 0."""

    def __init__(self, quiet: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            _Remaining(),
            console=console,
            transient=True,
            disable=quiet,
        )
        self.quiet = quiet
        self.worked = False  # a training stepped since the overall bar last advanced
        self.pending: list[TrainingBar] = []  # callbacks that have not stepped yet

    def __enter__(self) -> StepProgress:
        if not self.quiet:
            self.progress.start()
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.settle()
        self.progress.stop()

    def callback(
        self, description: str, total: int, unit: str = "steps", every: int = 10, count=False
    ) -> TrainingBar | None:
        """A per-step callback for one loop (a training by default), redrawn every few steps;
        `count`: the callback counts its calls instead of reading the step (ForkMerge's
        branches each restart the step count)."""
        if self.quiet:
            return None
        self.settle()
        bar = TrainingBar(self, description, total, unit, every, count)
        self.pending.append(bar)
        return bar

    def settle(self) -> None:
        """Callbacks that never stepped: their trainings came from the cache; say so."""
        for bar in self.pending:
            if bar.calls == 0:
                self.progress.console.print(f"{bar.description}: from cache", highlight=False)
        self.pending = []

    def overall(self, description: str, total: int, unit: str, done: int = 0) -> OverallBar | None:
        """The bar over a command's parts (cells, runs, trainings), `done` of them already
        finished (a resumed run); `advance()` after each part."""
        if self.quiet:
            return None
        return OverallBar(self, description, total, unit, done)


def _now() -> float:
    return time.monotonic()


class TrainingBar:
    """One training's bar, made at its first step, removed at its last."""

    def __init__(
        self, owner: StepProgress, description: str, total: int, unit: str, every: int, count
    ) -> None:
        self.owner, self.description = owner, description
        self.total, self.unit, self.every, self.count = total, unit, every, count
        self.task = None
        self.calls = 0

    def note(self, line: str) -> None:
        """A line about this training before it steps (the run cache's: waiting for another
        process that trains the same key), printed above the bars."""
        self.owner.progress.console.print(line, highlight=False, soft_wrap=True)

    def __call__(self, step: int) -> None:
        self.calls += 1
        if self.count:
            step = self.calls
        progress = self.owner.progress
        self.owner.worked = True
        if self.calls > 1 and self.task is None:
            return  # done: its bar is gone
        if self.task is None:
            self.task = progress.add_task(
                self.description, total=self.total, completed=step, unit=self.unit
            )
        if step >= self.total:
            progress.remove_task(self.task)
            self.task = None
        elif step % self.every == 0:
            progress.update(self.task, completed=step)


class OverallBar:
    """done/total of a command's parts; the ETA is the mean duration of the parts that
    trained (parts from the cache or a resumed run take no time) times the parts left."""

    def __init__(self, owner: StepProgress, description: str, total: int, unit: str, done: int):
        self.owner, self.total, self.done = owner, total, done
        self.durations: list[float] = []
        self.since = _now()
        self.task = owner.progress.add_task(
            description, total=total, completed=done, unit=unit, eta=None
        )
        owner.worked = False

    def advance(self) -> None:
        self.owner.settle()
        now = _now()
        if self.owner.worked:
            self.durations.append(now - self.since)
        self.owner.worked = False
        self.since, self.done = now, self.done + 1
        eta = None
        if self.durations and self.done < self.total:
            eta = (sum(self.durations) / len(self.durations), self.total - self.done, now)
        self.owner.progress.update(self.task, completed=self.done, eta=eta)


class _Remaining(TimeRemainingColumn):
    """rich's time remaining for a training's steps; the overall bar's own ETA for it."""

    def render(self, task):  # type: ignore[no-untyped-def]
        if "eta" not in task.fields:
            return super().render(task)
        from rich.text import Text

        if task.fields["eta"] is None:
            return Text("-:--:--", style="progress.remaining")
        mean, left, since = task.fields["eta"]
        current = _now() - since  # the part under way
        seconds = int(mean * (left - 1) + max(mean - current, 0.0))
        h, rest = divmod(seconds, 3600)
        return Text(f"{h}:{rest // 60:02d}:{rest % 60:02d}", style="progress.remaining")


class ParallelDisplay:
    """Progress of trainings run at once (`ntlab.core.executor`): an overall bar of trainings
    done/total with the number running and an ETA from the finished ones' durations, one bar
    per training under way, one line for each that came from the cache or failed. Called
    from the executor's threads: rich's Progress locks itself."""

    def __init__(self, progress: StepProgress, total: int, jobs: int) -> None:
        self.owner, self.jobs = progress, max(1, jobs)
        self.progress = progress.progress
        self.quiet = progress.quiet
        self.bars: dict[Any, Any] = {}
        self.durations: list[float] = []
        self.running = self.done = 0
        self.total = total
        self.task = None
        if not self.quiet:
            self.task = self.progress.add_task(
                "trainings", total=total, completed=0, unit="done · 0 running", eta=None
            )

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.progress.console.print(text, highlight=False, markup=False)

    def _update(self) -> None:
        if self.task is None:
            return
        eta = None
        if self.durations and self.done < self.total:
            mean = sum(self.durations) / len(self.durations)
            eta = (mean / self.jobs, self.total - self.done, _now())
        self.progress.update(
            self.task, completed=self.done, unit=f"done · {self.running} running", eta=eta
        )

    def cached(self, job: Any) -> None:
        self._print(f"{job.label}: from cache")
        self.done += 1
        self._update()

    def started(self, job: Any, pid: int | None = None) -> None:
        self.running += 1
        if not self.quiet:
            self.bars[job.label] = self.progress.add_task(
                job.label, total=job.total(), completed=0, unit="steps"
            )
        self._update()

    def step(self, job: Any, done: int) -> None:
        bar = self.bars.get(job.label)
        if bar is not None:
            self.progress.update(bar, completed=done)

    def finished(self, outcome: Any) -> None:
        bar = self.bars.pop(outcome.job.label, None)
        if bar is not None:
            self.progress.remove_task(bar)
        self.running -= 1
        self.done += 1
        if outcome.ok:
            self.durations.append(outcome.seconds)
            if outcome.source == "cache":  # another process trained it meanwhile
                self._print(f"{outcome.job.label}: from cache")
        else:
            self._print(f"{outcome.job.label}: failed: {outcome.error}")
        self._update()


class Parallel:
    """What the executor did for a command: the trainings that failed (`failed`, their
    cache folders in `broken`) and those it trained (`trained`); empty when it did not run."""

    def __init__(self, outcomes: list[Any] | None = None) -> None:
        outcomes = outcomes or []
        self.failed = [o for o in outcomes if not o.ok]
        self.broken = {o.job.folder() for o in self.failed}
        self.trained = {o.job.folder() for o in outcomes if o.ok and o.source == "run"}

    def blocked(self, jobs: list[Any]) -> bool:
        """Whether a training that `jobs` need failed (the part is left for --resume)."""
        return bool(self.broken) and any(j.folder() in self.broken for j in jobs)

    def source(self, jobs: list[Any], source: str) -> str:
        """A row's `source`: "run" where the executor trained one of its own (non-STL) jobs
        for this command, which the command then read from the cache."""
        own = [j for j in jobs if j.is_forkmerge or j.cfg.method != "stl"] or jobs
        return "run" if any(j.folder() in self.trained for j in own) else source

    def raise_failed(self, what: str) -> None:
        """Exit 1 naming the trainings that failed, if any."""
        from ntlab.core.executor import failures_message
        from ntlab.errors import TrainingsFailed

        if self.failed:
            retry = f"the other {what} are done; rerun with --resume to retry"
            raise TrainingsFailed(failures_message(self.failed, retry))


def run_parallel(jobs: list[Any], settings: Any, progress: StepProgress) -> Parallel:
    """Train `jobs` (`ntlab.core.executor.Job`) into the cache with `settings`, showing their
    progress (a failed training is named on the terminal as it fails)."""
    from ntlab.core.executor import plan, run_jobs

    planned = plan(jobs)
    display = ParallelDisplay(progress, len(planned), settings.jobs)
    outcomes = run_jobs(planned, settings, display)
    if display.task is not None:
        progress.progress.remove_task(display.task)
    return Parallel(outcomes)


def run_record(opts: dict[str, Any], cfg: Any, bench: Any, **extra: Any) -> dict[str, Any]:
    """What a run's config.json records: the training, the command's own settings, the
    preset and the data fingerprint."""
    return {
        "train": train_record(cfg),
        **extra,
        "preset": opts["preset"],
        "data": bench.fingerprint(),
    }


def train_record(cfg: Any) -> dict[str, Any]:
    """A training's options as config.json records them: the speed settings as the training
    runs them (`ntlab.core.speed.resolved_speed`: `auto` resolved for the device)."""
    from ntlab.core.speed import resolved_speed

    return {**asdict(cfg), **resolved_speed(cfg)}


def results_table(title: str, columns: list[str], left: tuple[str, ...] = ()) -> Table:
    """The table a command prints at the end: a left-aligned title, numbers right-aligned."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right")
    return table


def with_delta_m(results: dict[str, Any], stl: dict[str, Any]) -> dict[str, Any]:
    """`results` with `delta_m`: Δm over the target's metrics against its STL run, in %
    (None where it is undefined: every STL value 0)."""
    import math

    from ntlab.metrics import delta_m_of

    value = delta_m_of(results, stl)
    return {**results, "delta_m": value if math.isfinite(value) else None}


def metrics_line(results: dict[str, Any]) -> str | None:
    """`segment, test: mIoU 55.10 ↑ · pixel acc 93.20 ↑ · Δm vs STL +3.20%`: every metric of
    the target that Δm averages, where the target has more than one, and Δm."""
    from ntlab.metrics import metric_label

    over = results.get("delta_m_over") or {}
    test = (results.get("target_metrics") or {}).get("test") or {}
    if len(over) < 2 or not all(m in test for m in over):
        return None
    parts = [f"{metric_label(m)} {test[m]:.2f} {'↑' if up else '↓'}" for m, up in over.items()]
    if results.get("delta_m") is not None:
        parts.append(f"Δm vs STL {results['delta_m']:+.2f}%")
    return f"{results.get('target', 'target')}, test: " + " · ".join(parts)


def metric_fields(cfg) -> dict:
    """`metric` and `higher_is_better` of the target of `cfg` (ntlab.core.runner)."""
    from ntlab.core.runner import metric_fields as fields

    return fields(cfg)


def score_headers(results: dict[str, Any], splits: tuple[str, ...] = ("val", "test")) -> list[str]:
    """Column headers of the target's primary metric: `val acc`, `test mIoU`, `test abs err ↓`
    (↓: lower is better)."""
    from ntlab.metrics import metric_label

    arrow = "" if results.get("higher_is_better", True) else " ↓"
    label = metric_label(results.get("metric"))
    return [f"{split} {label}{arrow}" for split in splits]


def gain_view(r: dict[str, Any]) -> dict[str, Any]:
    """A run's one-seed TG (`transfer_gain`, `tg_se`, `tg_se_kind`, `effect` in its results)
    in the form of `ntlab.metrics.gain_fields`."""
    return {
        "tg": r["transfer_gain"],
        "tg_se": r.get("tg_se"),
        "tg_se_kind": r.get("tg_se_kind"),
        "seeds": 1,
        "effect": r.get("effect"),
    }


def tg_cells(r: dict[str, Any]) -> tuple[str, str]:
    """(`+0.12 ± 0.35`, `within noise`): a run's TG with its noise and verdict, for a table;
    empty where the run has no TG."""
    from ntlab.metrics import effect_label, tg_text

    if "transfer_gain" not in r:
        return "", ""
    fields = gain_view(r)
    return tg_text(fields), effect_label(fields["effect"]) if fields["effect"] else ""
