"""What every command shares: one-line errors, option resolution, progress and tables."""

from __future__ import annotations

import inspect
import json
import os
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
from ntlab.presets import DEFAULT_PRESET, PRESETS, preset_value
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
        _fail(run, str(exc))
        die(str(exc))
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
    from ntlab.report.page import write_run_report

    try:
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


def load_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    if not path.is_file():
        raise NtlabError(f"--config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise NtlabError(f"--config file {path} is not valid TOML: {exc}") from None
    return {k.replace("-", "_"): v for k, v in data.items()}


def resolve_options(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """Built-in defaults < preset < --config file < options given on the command line."""
    from ntlab.report import check_format

    config = values.get("config")
    file_cfg = load_config_file(config)
    unknown = sorted(set(file_cfg) - set(values))
    if unknown:
        raise NtlabError(
            f"--config file {config} has unknown keys {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(values))}"
        )
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
    resolved = {}
    for name, value in values.items():
        if explicit(name):
            resolved[name] = value
        elif name in file_cfg:
            resolved[name] = file_cfg[name]
        elif value is None and preset_value(preset_name, name) is not None:
            resolved[name] = preset_value(preset_name, name)
        else:
            resolved[name] = value
    resolved["preset"] = preset_name
    if resolved.get("out") is not None:
        check_out(Path(resolved["out"]))
    if "format" in resolved:
        check_format(resolved["format"])
    set_command_line(command_line(ctx))
    return resolved


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


def command_line(ctx: typer.Context) -> list[str]:
    """`ntlab SUBCOMMAND --option value …` with the options given on the command line, in
    their canonical spelling: what a report shows under "command" and a user can re-run."""
    names, c = [], ctx
    while c.parent is not None:
        names.insert(0, c.info_name)
        c = c.parent
    words = ["ntlab", *names]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name != "COMMANDLINE":
            continue
        value = ctx.params.get(param.name)
        if getattr(param, "is_flag", False) and isinstance(value, bool):
            flags = param.opts if value else param.secondary_opts
            words += flags[:1]
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


def check_resumable(path: Path | None, checkpoint: Path, record: dict, command: str) -> None:
    """--resume needs an unfinished run of `command` in `path` (--out), with its checkpoint,
    started with the same options (`record`, as config.json holds it)."""
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
    differ = [k for k, v in wanted.items() if saved.get(k) != v]
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
    """A rich progress bar over training steps; silent when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=quiet,
        )
        self.quiet = quiet

    def __enter__(self) -> StepProgress:
        if not self.quiet:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def callback(self, description: str, total: int, unit: str = "steps", every: int = 10):
        """A per-step callback for one loop (a training by default), redrawn every few steps."""
        if self.quiet:
            return None
        task = self.progress.add_task(description, total=total, unit=unit)

        def on_step(step: int) -> None:
            if step % every == 0 or step == total:
                self.progress.update(task, completed=step)

        return on_step


def run_record(opts: dict[str, Any], cfg: Any, bench: Any, **extra: Any) -> dict[str, Any]:
    """What a run's config.json records: the training, the command's own settings, the
    preset and the data fingerprint."""
    return {"train": asdict(cfg), **extra, "preset": opts["preset"], "data": bench.fingerprint()}


def results_table(title: str, columns: list[str], left: tuple[str, ...] = ()) -> Table:
    """The table a command prints at the end: a left-aligned title, numbers right-aligned."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right")
    return table


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
