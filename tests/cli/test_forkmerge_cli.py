"""`ntlab forkmerge train` as users drive it."""

import json
import os
import signal
import subprocess
import sys
import time

import matplotlib.image as mpimg
import pandas as pd
import pytest
from typer.testing import CliRunner

from ntlab.cli import app
from tests.report_checks import check_report

runner = CliRunner()
SMALL = [
    "--target",
    "optdigits",
    "--aux",
    "mnist,syn",
    "--steps",
    "12",
    "--merge-every",
    "5",
    "--batch-size",
    "16",
    "--eval-every",
    "5",
]


def invoke(*args):
    return runner.invoke(app, ["forkmerge", "train", *[str(a) for a in args]])


def test_forkmerge_writes_every_output(tiny_digits, tmp_path):
    out = tmp_path / "fm"
    result = invoke(*SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    merges = pd.read_csv(out / "merges.csv")
    assert list(merges.columns) == [
        "round", "step", "branch", "task_weights", "val_score", "lambda", "excluded"
    ]  # fmt: skip
    assert merges.groupby("round").size().tolist() == [2, 2, 2]  # one row per branch per round
    assert merges.groupby("round")["lambda"].sum().round(6).eq(1).all()
    assert merges["task_weights"].tolist()[:2] == ["optdigits=1", "optdigits=1,mnist+syn=1"]
    search = pd.read_csv(out / "search.csv")
    assert search.groupby("round").size().tolist() == [11, 11, 11] and search["chosen"].sum() == 3
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "forkmerge" and results["rounds"] == 3
    assert results["transfer_gain"] == pytest.approx(
        results["test_score"] - results["stl"]["test_score"]
    )
    assert results["ew"]["transfer_gain"] == pytest.approx(
        results["ew"]["test_score"] - results["stl"]["test_score"]
    )
    assert mpimg.imread(out / "lambda.png").shape[0] > 100
    assert json.loads((out / "status.json").read_text())["state"] == "completed"
    assert "forkmerge" in result.stdout
    assert "Λ* round 3 (step 12): target " in result.stdout  # joint: +mnist,syn
    assert " · +mnist,syn " in result.stdout
    page = check_report(
        out / "report.html",
        figures=3,
        texts=("Merge-search landscape", "Λ* per round", "branch 1: optdigits=1,mnist+syn=1"),
    )
    assert page.count("<tr>") >= 3 + 3  # headline rows (forkmerge, ew, stl) + one per round


def test_forkmerge_tg_comes_with_its_noise_and_verdict(tiny_digits, tmp_path):
    """ForkMerge's and EW's TG each with its paired test-set SE and verdict, printed and in
    results.json; a TG of 0 (same predictions as STL) is never called negative."""
    from ntlab.metrics import paired_tg_se, unpack_correct

    out = tmp_path / "fmnoise"
    result = invoke(*SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    for r in (results, results["ew"]):
        assert r["effect"] in ("helps", "hurts", "within_noise")
        assert r["tg_se_kind"] == "paired" and r["tg_se"] >= 0
        tg, se = paired_tg_se(
            unpack_correct(r["test_correct"]), unpack_correct(results["stl"]["test_correct"])
        )
        assert r["transfer_gain"] == pytest.approx(tg, abs=1e-3)
        assert r["tg_se"] == pytest.approx(se)
        bound = 2 * r["tg_se"]
        expected = "helps" if tg > bound else "hurts" if tg < -bound else "within_noise"
        assert r["effect"] == expected
        if r["transfer_gain"] == 0:
            assert r["effect"] == "within_noise"
    for name, r in (("ForkMerge", results), ("EW", results["ew"])):
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"{name} vs STL"))
        words = "within noise" if r["effect"] == "within_noise" else "beyond noise"
        assert (
            f"{r['transfer_gain']:+.2f} ± {r['tg_se']:.2f} points ({words}, 1 seed, paired" in line
        )
    row = next(x for x in result.stdout.splitlines() if "│ forkmerge" in x)
    assert (
        "±" in row and {"helps": "helps", "hurts": "hurts"}.get(results["effect"], "within") in row
    )
    if results["effect"] != "hurts":
        assert "negative" not in row and "hurts" not in row


@pytest.mark.parametrize(
    "args, message",
    [
        (["--merge-every", "50"], "--merge-every must be between 1 and --steps"),
        (["--prune", "0"], "--prune must keep at least 1 branch"),
        (["--branch", "optdigits=1", "--branch", "optdigits=0,syn=0"], "gives every task weight 0"),
        (["--branch", "optdigits=1", "--branch", "optdigits=1,nope=1"], "unknown task 'nope'"),
        (["--branches", "both"], "'both' is not one of joint, per-task"),
        (["--search", "binary", "--branches", "per-task"], "exactly two branches"),
    ],
)
def test_bad_options_exit_2_with_one_line(tiny_digits, tmp_path, args, message):
    result = invoke(*SMALL, *args, "--out", tmp_path / "bad")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "bad").exists()


def test_resume_without_a_checkpoint_is_refused(tiny_digits, tmp_path):
    result = invoke(*SMALL, "--out", tmp_path / "none", "--resume")
    assert result.exit_code == 2 and "nothing to resume" in result.stderr


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_numbers(tiny_digits, tmp_path):
    args = [
        "forkmerge",
        "train",
        "--target",
        "optdigits",
        "--aux",
        "mnist,syn",
        "--steps",
        "240",
        "--merge-every",
        "30",
        "--batch-size",
        "16",
        "--no-baselines",
        "-q",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ntlab", *args]
    whole = subprocess.run(
        [*cmd, "--out", str(tmp_path / "whole")], env=env, capture_output=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = killed / "checkpoints" / "forkmerge.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # in the middle of the second round
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    assert json.loads((killed / "status.json").read_text())["state"] == "running"
    resumed = subprocess.run(
        [*cmd, "--out", str(killed), "--resume"], env=env, capture_output=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    a.pop("duration_s"), b.pop("duration_s")
    assert a == b
    for table in ("merges.csv", "search.csv", "metrics.csv"):
        assert (tmp_path / "whole" / table).read_text() == (killed / table).read_text(), table
