"""The real console script in a subprocess: the README's commands, one-line errors."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.report_checks import check_report

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_commands() -> list[str]:
    """Every `ntlab …` line in the README's usage examples (```console blocks), in order."""
    blocks = re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S)
    return [
        line[2:].strip() for b in blocks for line in b.splitlines() if line.startswith("$ ntlab ")
    ]


def run(args, cwd, **env):
    return subprocess.run(
        [sys.executable, "-m", "ntlab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1200,  # a guard against hangs, generous for a loaded machine
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_readme_has_usage_examples():
    cmds = readme_commands()
    assert any(c.startswith("ntlab train") for c in cmds) and any(
        c.startswith("ntlab data list") for c in cmds
    )


def reads_runs(args: list[str]) -> bool:
    """Whether a README command reads what an earlier one wrote (`report`, `--against`)."""
    return args[0] == "report" or "--against" in args


@pytest.mark.slow
def test_readme_commands_run_as_written(tiny_digits, tmp_path):
    """Each README example, verbatim, except `data prepare` (the fixture built tiny data).

    The commands that only write run two at a time, each on one thread (OMP_NUM_THREADS=1:
    two trainings on the two cores, sharing the run cache as concurrent users do); those
    that read their runs follow, in order."""
    from concurrent.futures import ThreadPoolExecutor

    commands = [(c, shlex.split(c)[1:]) for c in readme_commands()]
    commands = [(c, a) for c, a in commands if a[:2] != ["data", "prepare"]]
    first = [(c, a) for c, a in commands if not reads_runs(a)]
    then = [(c, a) for c, a in commands if reads_runs(a)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda ca: (ca[0], run(ca[1], tmp_path, OMP_NUM_THREADS="1")), first))
    done += [(c, run(a, cwd=tmp_path)) for c, a in then]
    for command, proc in done:
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
    finished = sorted(tmp_path.glob("runs/*/results.json"))
    assert finished, "the README examples wrote no run"
    for path in finished:
        assert json.loads((path.parent / "status.json").read_text())["state"] == "completed"
        check_report(path.parent / "report.html")
    for name, figures in (("b", 1), ("compare", 1 + 1 + 3 + 1), ("fm-svg", 3)):
        check_report(tmp_path / "reports" / f"{name}.html", figures=figures)


def test_usage_error_is_one_line_on_stderr(tmp_path):
    proc = run(["train", "--target", "mnist", "--no-such-option"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: No such option")
    assert "Traceback" not in proc.stderr


def test_version_and_module_entry_point(tmp_path):
    proc = run(["--version"], cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("ntlab ")
