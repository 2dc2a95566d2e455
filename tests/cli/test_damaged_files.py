"""Damaged files through the real CLI: each ends with exit code 2 and one line on stderr that
names the file and what to do (never a traceback, never success), or is repaired where the
command is the repair (`data prepare`).

One table: what is damaged, the command, the exit code, a fragment of the message, and what
must be on disk afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ntlab.analysis.pairwise as pw
from ntlab.cli import app
from tests.conftest import TINY_TRAIN

runner = CliRunner()
BUDGET = ["--steps", "6", "--batch-size", "16", "--eval-every", "3"]
TINY_SIZES = [x for d, n in TINY_TRAIN.items() for x in ("--train-size", f"{d}={n}")]
TINY_SIZES += ["--val", "50", "--test", "60"]


@dataclass
class World:
    home: Path  # a private NTLAB_HOME holding a copy of the tiny digits build
    mnist: Path  # a copy of the fake MNIST files
    run: Path  # a copy of a finished `train` run
    killed: Path  # a copy of an interrupted `pairwise` run (checkpoints/cells.csv)

    @property
    def digits(self) -> Path:
        return self.home / "datasets" / "digits"


@pytest.fixture(scope="module")
def originals(tiny_digits, fake_mnist, tmp_path_factory):
    base = tmp_path_factory.mktemp("damaged-originals")
    result = runner.invoke(
        app, ["train", "--target", "optdigits", *BUDGET, "--out", str(base / "run")]
    )
    assert result.exit_code == 0, result.output
    real = pw.run_cell
    calls = []

    def dies_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(args)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pw, "run_cell", dies_after_one)
        result = runner.invoke(app, [*PAIRWISE, "--out", str(base / "killed")])
    assert result.exit_code == 130, result.output
    assert (base / "killed" / "checkpoints" / "cells.csv").is_file()
    return tiny_digits, fake_mnist[0], base


PAIRWISE = ["pairwise", "--domains", "optdigits,mnist", "--method", "ew", *BUDGET]


@pytest.fixture
def world(originals, tmp_path, monkeypatch) -> World:
    digits, mnist, base = originals
    w = World(tmp_path / "home", tmp_path / "mnist", tmp_path / "run", tmp_path / "killed")
    shutil.copytree(digits, w.digits)
    shutil.copytree(mnist, w.mnist)
    shutil.copytree(base / "run", w.run)
    shutil.copytree(base / "killed", w.killed)
    monkeypatch.setenv("NTLAB_HOME", str(w.home))
    return w


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def manifest_ok(w: World) -> bool:
    manifest = json.loads((w.digits / "manifest.json").read_text())
    return isinstance(manifest, dict) and "fingerprint" in manifest


@dataclass
class Case:
    id: str
    damage: Callable[[World], None]
    args: Callable[[World], list]
    code: int
    fragment: str  # in the one line on stderr (exit 2), or anywhere in the output (exit 0)
    after: Callable[[World], bool]
    subprocess: bool = False  # through `python -m ntlab` (the console script's own handling)


def prepare_args(*extra):
    return lambda w: ["data", "prepare", "digits", "--mnist-dir", w.mnist, "--no-verify", *extra]


def train_args(target: str):
    return lambda w: ["train", "--target", target, *BUDGET, "--out", w.home.parent / "new"]


def no_new_run(w: World) -> bool:
    return not (w.home.parent / "new" / "results.json").exists()


def write(name: str, text: str) -> Callable[[World], None]:
    return lambda w: (w.digits / name).write_text(text)


CASES = [
    # The manifest of the digits build.
    Case("manifest-garbage-data-list", write("manifest.json", '{"benchmark": "dig'),
         lambda w: ["data", "list"], 2, "manifest.json is damaged (",
         lambda w: not manifest_ok_safe(w)),
    Case("manifest-not-object-data-list", write("manifest.json", "[1, 2]"),
         lambda w: ["data", "list"], 2, "manifest.json is damaged (it holds a JSON list",
         lambda w: True),
    Case("manifest-garbage-train", write("manifest.json", "\x00\x01garbage"),
         train_args("optdigits"), 2, "data prepare digits --force", no_new_run),
    Case("manifest-no-domains-train", write("manifest.json", '{"fingerprint": "x"}'),
         train_args("optdigits"), 2, "manifest.json is damaged (no valid", no_new_run),
    Case("manifest-garbage-prepare-force", write("manifest.json", "{{{"),
         prepare_args("--force", *TINY_SIZES), 0, "built:", manifest_ok),
    Case("manifest-garbage-prepare", write("manifest.json", "{{{"),
         prepare_args(*TINY_SIZES), 0, "rebuilding it", manifest_ok),
    # A domain's file.
    Case("domain-truncated-data-list", lambda w: truncate(w.digits / "syn.pt"),
         lambda w: ["data", "list"], 2, "syn.pt is damaged (", lambda w: True),
    Case("domain-bytes-changed-data-list",
         lambda w: (w.digits / "mnist.pt").write_bytes(
             bytes(b ^ 1 for b in (w.digits / "mnist.pt").read_bytes())),
         lambda w: ["data", "list"], 2, "mnist.pt is damaged (its SHA-256", lambda w: True),
    Case("old-build-domain-truncated-data-list",
         lambda w: (old_build(w), truncate(w.digits / "syn.pt")),
         lambda w: ["data", "list"], 2, "syn.pt is damaged (", lambda w: True),
    Case("domain-truncated-train", lambda w: truncate(w.digits / "syn.pt"),
         train_args("syn"), 2, "syn.pt is damaged (", no_new_run),
    Case("domain-missing-train", lambda w: (w.digits / "syn.pt").unlink(),
         train_args("syn"), 2, "syn.pt is damaged (missing)", no_new_run),
    Case("domain-truncated-prepare-force", lambda w: truncate(w.digits / "syn.pt"),
         prepare_args("--force", *TINY_SIZES), 0, "built:",
         lambda w: (w.digits / "syn.pt").stat().st_size > 1000),
    # A run's JSON files, read by `report`.
    Case("status-not-object-report", lambda w: (w.run / "status.json").write_text('"done"'),
         lambda w: ["report", w.run, "--out", w.run.parent / "r.html"], 2,
         "status.json is damaged (it holds a JSON str, not an object)",
         lambda w: not (w.run.parent / "r.html").exists()),
    Case("status-truncated-report", lambda w: truncate(w.run / "status.json"),
         lambda w: ["report", w.run, "--out", w.run.parent / "r.html"], 2,
         "status.json is damaged (not valid JSON",
         lambda w: not (w.run.parent / "r.html").exists()),
    Case("results-truncated-report", lambda w: truncate(w.run / "results.json", 0.3),
         lambda w: ["report", w.run, "--out", w.run.parent / "r.html"], 2,
         "results.json is damaged (", lambda w: not (w.run.parent / "r.html").exists()),
    Case("config-not-object-report", lambda w: (w.run / "config.json").write_text("[]"),
         lambda w: ["report", w.run, "--out", w.run.parent / "r.html"], 2,
         "config.json is damaged (it holds a JSON list", lambda w: True),
    # MNIST files given with --mnist-dir and not verified.
    Case("mnist-gz-truncated-prepare",
         lambda w: truncate(w.mnist / "train-images-idx3-ubyte.gz"),
         prepare_args("--force", *TINY_SIZES), 2,
         "train-images-idx3-ubyte.gz is damaged (", manifest_ok, subprocess=True),
    # A killed pairwise run's checkpoint, read by --resume.
    Case("cells-garbage-resume",
         lambda w: (w.killed / "checkpoints" / "cells.csv").write_bytes(b"\x00\xff garbage\n"),
         lambda w: [*PAIRWISE, "--out", w.killed, "--resume"], 2, "cells.csv is damaged (",
         lambda w: (w.killed / "checkpoints" / "cells.csv").read_bytes().endswith(b"garbage\n")),
    Case("cells-empty-resume", lambda w: (w.killed / "checkpoints" / "cells.csv").write_text(""),
         lambda w: [*PAIRWISE, "--out", w.killed, "--resume"], 2,
         "cells.csv is damaged (it is empty)",
         lambda w: not (w.killed / "results.json").exists()),
    Case("cells-bad-seed-resume",
         lambda w: (w.killed / "checkpoints" / "cells.csv").write_text(
             "target,aux,method,seed\noptdigits,mnist,ew,zero\n"),
         lambda w: [*PAIRWISE, "--out", w.killed, "--resume"], 2,
         "cells.csv is damaged (column seed has 'zero')",
         lambda w: not (w.killed / "results.json").exists()),
]  # fmt: skip


def old_build(w: World) -> None:
    """A build from before the manifest recorded each file's size and digest."""
    manifest = json.loads((w.digits / "manifest.json").read_text())
    for entry in manifest["domains"].values():
        entry.pop("bytes"), entry.pop("sha256")
    (w.digits / "manifest.json").write_text(json.dumps(manifest))


def manifest_ok_safe(w: World) -> bool:
    try:
        return manifest_ok(w)
    except ValueError:
        return False


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_damaged_file(world, case):
    case.damage(world)
    args = [str(a) for a in case.args(world)]
    if case.subprocess:
        proc = subprocess.run(
            [sys.executable, "-m", "ntlab", *args],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "200"},
        )
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        result = runner.invoke(app, args)
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    assert code == case.code, stdout + stderr
    assert "Traceback" not in stdout + stderr
    if case.code == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert lines[0].startswith("error: ") and case.fragment in lines[0], lines[0]
    else:
        assert case.fragment in stdout + stderr
    assert case.after(world)


def test_data_list_marks_the_damaged_file(world):
    truncate(world.digits / "permlo.pt")
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 2
    assert result.stdout.count("DAMAGED") == 1
    assert "permlo.pt is damaged" in result.stderr
    assert "ntlab data prepare digits --force" in result.stderr


def test_a_file_that_ends_early_is_not_reported_as_aborted(world, monkeypatch):
    """Click turns an EOFError (what a truncated gzip or pickle raises) into "Aborted"; every
    command's guard names it as a damaged file instead."""
    import ntlab.data.digits as digits

    def ends_early(*args, **kwargs):
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(digits, "prepare_digits", ends_early)
    result = runner.invoke(app, ["data", "prepare", "digits"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "a file ended early, it is damaged" in lines[0]
