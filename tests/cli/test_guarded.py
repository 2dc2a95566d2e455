"""A failed run's one line survives a report renderer that cannot even be imported (torchrun's
SIGTERM can arrive while matplotlib imports, leaving it half-made)."""

from __future__ import annotations

import json
import sys

import pytest
import typer

from ntlab.cli.common import guarded
from ntlab.errors import NtlabError
from ntlab.runs import RunDir


def test_a_failure_is_one_line_even_when_the_report_cannot_be_imported(
    tmp_path, monkeypatch, capsys
):
    run = RunDir(tmp_path / "run")
    run.start("train", {"target": "mnistm"})
    monkeypatch.setitem(sys.modules, "ntlab.report.page", None)  # importing it raises
    with pytest.raises(typer.Exit) as ended, guarded(run):
        raise NtlabError("rank 1 of 2 stopped; rerun with --resume")
    assert ended.value.exit_code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["error: rank 1 of 2 stopped; rerun with --resume"]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"
