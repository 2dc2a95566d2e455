"""The HTML report: one self-contained page (CSS and figures inlined) for one or many runs.

Every command writes `<out>/report.html` through `write_run_report`, and `ntlab report`
goes through `write_report`: the same views, figures and template.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import shlex
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from ntlab import __version__
from ntlab.errors import NtlabError
from ntlab.paths import ntlab_home
from ntlab.report import check_format
from ntlab.report.views import (
    FigureSpec,
    Run,
    TableSpec,
    comparison,
    grouped_by_target,
    view_for,
)
from ntlab.runs import atomic_write_text

REPORT_FILE = "report.html"
# An absolute path in text: "/" after a space, quote, "=" or line start, up to a delimiter.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~$/+<:\-])/[^\s\"'<>&:,;()\[\]{}|*?]+")
DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")
MAX_UPS = 3  # a path at most this many folders above the report is shown relative to it
MIME = {"png": "image/png", "svg": "image/svg+xml"}
DPI = 130
NUMERIC = re.compile(r"^[+−\-]?\d[\d.,]*( ± [\d.]+)?%?$")


class ShownPaths:
    """Paths as a report shows them: never absolute paths of the machine it was made on.

    Under NTLAB_HOME: `$NTLAB_HOME/…`; near the report (under the folder MAX_UPS above it,
    never `/` itself): relative to the report's folder; elsewhere under the home folder:
    `~/…`. Other absolute paths (a data root under /data that the user typed) stay."""

    def __init__(self, base: Path) -> None:
        self.base = os.path.realpath(base)
        near = Path(self.base)
        for _ in range(MAX_UPS):
            if len(near.parent.parts) > 1:
                near = near.parent
        self.near = str(near)
        self.ntlab_home = os.path.realpath(ntlab_home())
        self.home = os.path.realpath(Path.home())

    def path(self, path: str | Path) -> str:
        text = str(path)
        if not text.startswith(os.sep) or text.startswith(os.sep * 2):
            return text
        real = os.path.realpath(text)
        if _under(real, self.ntlab_home):
            return "$NTLAB_HOME" + real[len(self.ntlab_home) :]
        if _under(real, self.near):
            return os.path.relpath(real, self.base)
        if _under(real, self.home) and len(Path(self.home).parts) > 1:
            return "~" + real[len(self.home) :]
        return text

    def text(self, text: str) -> str:
        """`text` with every absolute path in it shown as `path` shows it."""

        def shown(match: re.Match) -> str:
            token = match.group(0)
            stem = token.rstrip(".")  # the full stop of a sentence
            return self.path(stem) + token[len(stem) :]

        return ABSOLUTE_PATH.sub(shown, text)

    def page(self, html_text: str) -> str:
        """A whole page, inlined figures (data: URIs) left untouched."""
        out, last = [], 0
        for m in DATA_URI.finditer(html_text):
            out += [self.text(html_text[last : m.start()]), m.group(0)]
            last = m.end()
        return "".join([*out, self.text(html_text[last:])])


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def figure_bytes(figure, fmt: str) -> bytes:
    buffer = io.BytesIO()
    metadata = {"Software": None} if fmt == "png" else {"Date": None}
    figure.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
    plt.close(figure)
    return buffer.getvalue()


def save_figures(run: Run, fmt: str = "png") -> list[Path]:
    """Draw every figure of a run into its directory (`<name>.<fmt>`, written atomically)."""
    paths = []
    for spec in view_for(run).figures(run):
        path = run.path / f"{spec.name}.{fmt}"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(figure_bytes(spec.build(), fmt))
        os.replace(tmp, path)
        paths.append(path)
    return paths


@dataclass
class Figure:
    title: str
    caption: str
    uri: str | None
    error: str | None = None


def _figure(run: Run | None, spec: FigureSpec, fmt: str) -> Figure:
    """A completed run's own figure file when it has one in `fmt`; otherwise drawn now from
    the run's tables (a failed run's partial tables included)."""
    saved = run.path / f"{spec.name}.{fmt}" if run is not None else None
    try:
        if saved is not None and run.state == "completed" and saved.is_file():
            data = saved.read_bytes()
        else:
            data = figure_bytes(spec.build(), fmt)
    except Exception as exc:  # a partial table may not be drawable; say so, keep the page
        plt.close("all")
        return Figure(spec.title, spec.caption, None, f"{type(exc).__name__}: {exc}")
    uri = f"data:{MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"
    return Figure(spec.title, spec.caption, uri)


def table_html(frame: pd.DataFrame) -> str:
    """A plain HTML table; cells that read as numbers are right-aligned in tabular figures."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            text = "" if value is None or (isinstance(value, float) and pd.isna(value)) else value
            if isinstance(text, float):
                text = f"{text:.4g}"
            text = str(text)
            cls = ' class="num"' if NUMERIC.match(text) else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _command_line(config: dict[str, Any]) -> str:
    env = config.get("environment", {})
    words = env.get("command_line")
    if not words:  # runs written before the command line was recorded
        argv = list(env.get("argv") or [])
        words = ["ntlab", *argv[1:]] if argv else ["ntlab", str(config.get("command", ""))]
    return shlex.join(words)


def _duration(run: Run) -> str:
    seconds = run.status.get("duration_s") or (run.results or {}).get("duration_s")
    if seconds is None:
        return ""
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def _data_meta(run: Run) -> list[tuple[str, str]]:
    """Image-list runs: where the data is, how val was made, and any images left out."""
    data = run.config.get("data")
    out = []
    if isinstance(data, dict) and "root" in data:
        made = sorted(set((data.get("val_split") or {}).values()))
        out.append(
            (
                "data",
                f"{data.get('benchmark')} at {data['root']}: {', '.join(data.get('domains', []))}"
                f"; {data.get('classes')} classes; val: {'; '.join(made)}",
            )
        )
    skipped = (run.results or {}).get("skipped_images")
    if skipped:
        examples = (run.results or {}).get("skipped_examples", [])[:3]
        out.append(("skipped images", f"{skipped} unreadable, left out: {'; '.join(examples)}"))
    return out


def _device(config: dict[str, Any]) -> str:
    env = config.get("environment", {})
    chosen = config.get("train", {}).get("device", "")
    hardware = env.get("device", "")
    return ", ".join(x for x in (f"--device {chosen}" if chosen else "", hardware) if x)


def _partial_tables(run: Run, limit: int = 20) -> list[TableSpec]:
    out = []
    for path in run.csv_files():
        try:
            frame = pd.read_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue
        rel = path.relative_to(run.path)
        shown = frame.head(limit)
        more = f" (first {limit} of {len(frame)} rows)" if len(frame) > limit else ""
        out.append(TableSpec(f"{rel}{more}", shown))
    return out


def run_context(run: Run, fmt: str, anchor: str) -> dict[str, Any]:
    view = view_for(run)
    failed = run.state != "completed"
    try:
        specs = view.figures(run)
        tables = view.tables(run)
        headline = view.headline(run)
    except Exception as exc:  # damaged tables must not hide the rest of the report
        specs, tables, headline = [], [], None
        view_error = f"{type(exc).__name__}: {exc}"
    else:
        view_error = None
    env = run.config.get("environment", {})
    meta = [
        ("command", _command_line(run.config)),
        ("run directory", str(run.path.resolve())),  # shown relative to the report
        ("state", run.state),
        ("started", run.status.get("started", "")),
        ("finished", run.status.get("finished", "")),
        ("duration", _duration(run)),
        ("preset", str(run.config.get("preset") or "default")),
        ("device", _device(run.config)),
        (
            "versions",
            ", ".join(f"{k} {env[k]}" for k in ("ntlab", "torch", "python") if env.get(k)),
        ),
        ("git revision", str(env.get("git_revision") or "")),
        *_data_meta(run),
    ]
    config = {k: v for k, v in run.config.items() if k != "environment"}
    return {
        "anchor": anchor,
        "name": run.name,
        "command": run.command,
        "title": view.title,
        "state": run.state,
        "failed": failed,
        "error": run.status.get("error")
        or ("no status.json: the run never started properly" if not run.status else None)
        or ("the run has not finished: no results.json yet" if failed else None),
        "meta": [(k, v) for k, v in meta if v],
        "headline": table_html(headline) if headline is not None and len(headline) else None,
        "figures": [_figure(run, s, fmt) for s in specs],
        "tables": [
            {"title": t.title, "caption": t.caption, "html": table_html(t.frame)} for t in tables
        ],
        "partial": [
            {"title": t.title, "caption": t.caption, "html": table_html(t.frame)}
            for t in (_partial_tables(run) if failed else [])
        ],
        "view_error": view_error,
        "config_json": json.dumps(config, indent=2, default=str),
        "results_json": json.dumps(run.results, indent=2, default=str) if run.results else None,
    }


def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("ntlab.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def template_digest() -> str:
    """A digest of the code that shapes a report (templates, views, figures, this module):
    an example report that carries another digest is out of date."""
    h = hashlib.sha256()
    package = resources.files("ntlab.report")
    files = [package.joinpath(n) for n in ("page.py", "views.py", "figures.py")]
    files += sorted(package.joinpath("templates").iterdir(), key=lambda f: f.name)
    for file in files:
        h.update(file.name.encode() + b"\0" + file.read_bytes())
    return h.hexdigest()[:16]


def render(
    runs: list[Run], fmt: str = "png", title: str | None = None, base: Path | None = None
) -> str:
    """The page for one run, or the comparison of several (overview first, then each run).

    Paths on the page are shown relative to `base`, the folder the page is written into
    (default: the current folder), or under `$NTLAB_HOME` / `~` (`ShownPaths`)."""
    if not runs:
        raise NtlabError("no run directories given; pass one or more --out folders of ntlab runs")
    check_format(fmt)
    runs = grouped_by_target(runs) if len(runs) > 1 else runs
    env = _environment()
    contexts = [run_context(run, fmt, f"run-{i}") for i, run in enumerate(runs)]
    overview = None
    if len(runs) > 1:
        frame, specs = comparison(runs)
        overview = {
            "html": table_html(frame),
            "figures": [_figure(None, s, fmt) for s in specs],
        }
    css = resources.files("ntlab.report").joinpath("templates/report.css").read_text()
    if title is None:
        title = (
            f"ntlab {runs[0].command}: {runs[0].name}"
            if len(runs) == 1
            else f"ntlab: {len(runs)} runs compared"
        )
    page = env.get_template("report.html.j2").render(
        title=title,
        css=css,
        runs=contexts,
        overview=overview,
        version=__version__,
        digest=template_digest(),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        fmt=fmt,
    )
    return ShownPaths(Path.cwd() if base is None else base).page(page)


def write_report(paths: list[Path], out: Path, fmt: str = "png", title: str | None = None) -> Path:
    """Render run directories into `out` (written atomically)."""
    runs = [Run.load(p) for p in paths]
    out = Path(out)
    if out.is_dir():
        raise NtlabError(f"--out {out} is a folder; give a file name such as {out}/report.html")
    atomic_write_text(out, render(runs, fmt, title, base=out.parent))
    return out


def write_run_report(path: Path, fmt: str = "png") -> Path:
    """A command's own report, `<run>/report.html`."""
    return write_report([path], Path(path) / REPORT_FILE, fmt)
