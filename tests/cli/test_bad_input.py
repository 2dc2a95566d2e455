"""Bad input through the real command line, one table: the command, the exit code, a
fragment of the one-line message, and what must be left on disk.

`nothing`: refused before a run directory was made (every number is checked before any
training). `failed`: the run started, and its status.json says failed, without results.json.
"""

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ntlab.cli import app
from ntlab.cli.common import config_value
from ntlab.errors import NtlabError

runner = CliRunner()
FAST = ["--steps", "4", "--eval-every", "2", "--batch-size", "8"]
TRAIN = ["train", "-t", "mnist", *FAST]
FM = ["forkmerge", "train", "--target", "optdigits", "--aux", "mnist", *FAST, "--merge-every", "2"]
GCS = ["gcs", "--target", "optdigits", "--aux", "mnist", "--pretrain-steps", "4"]
GCS += ["--batches", "2", "--probe-steps", "2", "--batch-size", "8"]
TSNE = ["tsne", "--target", "optdigits", "--aux", "mnist", *FAST]
BIG = "99999999999999999999"
SEED_RULE = "must be an integer between 0 and 4294967295"


@dataclass
class Bad:
    args: list[str]
    message: str  # a fragment of the one line on stderr; {tmp} is the test's folder
    left: str = "nothing"  # nothing | failed
    code: int = 2
    out: bool = True  # the table adds --out {tmp}/run

    def __str__(self) -> str:
        return " ".join(self.args)


TABLE = [
    # item 11: NaN and inf are refused in every numeric option and list
    Bad([*TRAIN, "--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    Bad(["train", "-t", "mnist", "-m", "fixed", "--aux", "syn", "--lam", "nan", *FAST],
        "--lam must be a finite number ≥ 0, got nan"),
    Bad([*TRAIN, "--weight-decay", "inf"], "--weight-decay must be a finite"),
    Bad(["train", "-t", "mnist", *FAST, "--backbone-lr-scale", "nan"],
        "--backbone-lr-scale must be a finite number > 0, got nan"),
    Bad(["csd", "-t", "mnist", "--aux", "syn", "--lams", "0,inf", *FAST],
        "every λ in --lams must be a finite number ≥ 0, got inf"),
    Bad([*GCS, "--lams", "0,nan"], "every λ in --lams must be a finite number ≥ 0, got nan"),
    Bad([*GCS, "--eta", "inf"], "--eta must be a finite number > 0, got inf"),
    Bad([*FM, "--merge-margin", "nan"], "--merge-margin must be a finite number ≥ 0, got nan"),
    Bad([*FM, "--branch", "optdigits=1", "--branch", "optdigits=1,mnist=nan"],
        "the weight of mnist in --branch 'optdigits=1,mnist=nan' must be a finite number ≥ 0"),
    Bad(["compare", "-t", "mnist", "--aux", "syn", "--lams", "0,-inf", *FAST],
        "every λ in --lams must be a finite number ≥ 0, got -inf"),
    # item 11: a loss that becomes non-finite stops the run, marked failed
    Bad(["train", "-t", "mnist", *FAST, "--optimizer", "sgd", "--lr", "1e30"],
        "loss of mnist became nan at or before step 2 (between steps 1 and 2); lower --lr",
        left="failed"),
    # item 13: huge budgets, widths GroupNorm cannot split, t-SNE perplexity, one seed rule
    Bad(["train", "-t", "mnist", "--steps", BIG],
        "--steps must be an integer between 1 and 100000000"),
    Bad(["train", "-t", "mnist", *FAST, "--width", "0"], "--width must be an integer between 1"),
    Bad(["train", "-t", "mnist", *FAST, "--width", "12"], "must be 1, 2, 3, 4 or a multiple of 8"),
    Bad([*TSNE, "--perplexity", "0"], "--perplexity must be a finite number in (0, 1500)"),
    Bad([*TSNE, "--perplexity", "100000"], "--perplexity must be a finite number in (0, 1500)"),
    Bad(["train", "-t", "mnist", *FAST, "--seed", "-1"], f"--seed {SEED_RULE}, got -1"),
    Bad(["sweep", "-t", "mnist", "--aux", "syn", "--lams", "0,1", "--seeds", f"0,{BIG}", *FAST],
        f"every seed in --seeds {SEED_RULE}"),
    Bad(["data", "prepare", "--seed", "-1"], f"--seed {SEED_RULE}, got -1", out=False),
    Bad([*GCS, "--batches", BIG], "--batches must be an integer between 1 and 100000000"),
    Bad(["ternary", "-t", "optdigits", "--aux", "mnist,syn", *FAST, "--resolution", "1000"],
        "--resolution must be an integer between 1 and 100"),
    # item 14: every ForkMerge option before the first step
    Bad([*FM, "--grid-step", "0.3"], "--grid-step must divide 1"),
    Bad([*FM, "--grid-step", "0"], "--grid-step must be a finite number in [0.001, 1], got 0.0"),
    Bad([*FM, "--grid-step", "nan"], "--grid-step must be a finite number in [0.001, 1], got nan"),
    Bad([*FM, "--merge-heads", "heads"],
        "Invalid value for '--merge-heads': 'heads' is not one of all, shared"),
    Bad([*FM, "--merge-op", "mean"],
        "Invalid value for '--merge-op': 'mean' is not one of average, ties, dare"),
    Bad([*FM, "--merge-op", "ties", "--ties-k", "0"], "--ties-k must be a finite number in (0, 1]"),
    Bad([*FM, "--merge-op", "dare", "--dare-p", "1"], "--dare-p must be a finite number in [0, 1)"),
    Bad(["ternary", "-t", "optdigits", "--aux", "mnist,syn", *FAST, "--dare-p", "nan"],
        "--dare-p must be a finite number in [0, 1), got nan"),
    Bad(["pairwise", "--domains", "mnist,syn", "--method", "forkmerge", "--merge-heads", "x", *FAST,
         "--merge-every", "2"],
        "'x' is not one of all, shared"),
    Bad(["forkmerge", "train", "-t", "mnist", "--branches", "per-task", "--search", "grid",
         "--grid-step", "0.01", *FAST, "--merge-every", "2"],
        "gives 4598126 candidate merges per round"),
    # item 16: config types, --out, unreadable weights, the sweep's own option first
    Bad(["train", "-t", "mnist", *FAST, "--config", "{tmp}/twenty.toml"],
        "config file {tmp}/twenty.toml: steps must be an integer, got 'twenty'"),
    Bad(["train", "-t", "mnist", *FAST, "--config", "{tmp}/nan.toml"],
        "--lr must be a finite number > 0, got nan"),
    Bad(["train", "-t", "mnist", *FAST, "--out", "{tmp}/afile.txt/sub"],
        "--out {tmp}/afile.txt/sub: {tmp}/afile.txt is a file", out=False),
    Bad(["train", "-t", "mnist", *FAST, "--out", ""], "--out is empty or the current directory",
        out=False),
    Bad(["train", "-t", "mnist", *FAST, "--weights", "{tmp}/afile.txt"],
        "cannot read weights file {tmp}/afile.txt: it is not a file written by torch.save",
        left="failed"),
    Bad(["sweep", "-t", "mnist", "--aux", "syn", "--with-forkmerge", "--forkmerge-branches", "foo",
         *FAST], "'foo' is not one of joint, per-task"),
]  # fmt: skip


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The test's folder, also the current directory, with the files the table names."""
    (tmp_path / "twenty.toml").write_text('steps = "twenty"\n')
    (tmp_path / "nan.toml").write_text("lr = nan\n")
    (tmp_path / "afile.txt").write_text("hello\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def command(bad: Bad, tmp) -> list[str]:
    args = [a.replace("{tmp}", str(tmp)) for a in bad.args]
    return args + (["--out", str(tmp / "run")] if bad.out else [])


def check_left(bad: Bad, tmp) -> None:
    run = tmp / "run"
    assert not list(tmp.glob("**/results.json"))  # nothing looks like a finished run
    if bad.left == "nothing":
        assert not run.exists()
        assert sorted(p.name for p in tmp.iterdir()) == ["afile.txt", "nan.toml", "twenty.toml"]
    else:
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "failed"
        assert bad.message.replace("{tmp}", str(tmp)) in status["error"]


@pytest.mark.parametrize("bad", TABLE, ids=str)
def test_bad_input_is_one_line_and_exit_2(tiny_digits, folder, bad):
    result = runner.invoke(app, command(bad, folder))
    assert result.exit_code == bad.code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert bad.message.replace("{tmp}", str(folder)) in lines[0]
    check_left(bad, folder)


SUBPROCESS = [str(b) for b in TABLE if b.args[:2] == ["train", "-t"]][:1] + [
    "train -t mnist --steps 4 --eval-every 2 --batch-size 8 --optimizer sgd --lr 1e30",
    "train -t mnist --steps 4 --eval-every 2 --batch-size 8 --config {tmp}/twenty.toml",
    "train -t mnist --steps 4 --eval-every 2 --batch-size 8 --out {tmp}/afile.txt/sub",
]


@pytest.mark.parametrize("text", SUBPROCESS)
def test_no_traceback_reaches_the_user(tiny_digits, folder, text):
    """The console entry point itself (`python -m ntlab`): one line, exit 2, no traceback."""
    bad = next(b for b in TABLE if str(b) == text)
    proc = subprocess.run(
        [sys.executable, "-m", "ntlab", *command(bad, folder)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and bad.message.replace("{tmp}", str(folder)) in lines[0]
    check_left(bad, folder)


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (12, int, 12),
        (1, float, 1.0),
        ("runs/a", Path, Path("runs/a")),
        (["syn", "mnist"], str, "syn,mnist"),
        ([0, 0.25, 1], str, "0,0.25,1"),
        (0, str, "0"),
        (True, bool, True),
    ],
)
def test_config_values_take_the_option_type(value, kind, expected):
    assert config_value(Path("c.toml"), "x", value, kind, False) == expected


@pytest.mark.parametrize(
    ("value", "kind", "message"),
    [
        ("twenty", int, "x must be an integer, got 'twenty'"),
        (2.5, int, "x must be an integer, got 2.5"),
        (True, int, "x must be an integer, got True"),
        ("1e-3", float, "x must be a number, got '1e-3'"),
        ("yes", bool, "x must be true or false"),
        (3, Path, "x must be a string, got 3"),
        ([True], str, "x must be a string, a number or a list of them"),
    ],
)
def test_config_values_of_another_type_name_the_file_and_key(value, kind, message):
    with pytest.raises(NtlabError, match="^config file c.toml: " + re.escape(message)):
        config_value(Path("c.toml"), "x", value, kind, False)
