"""The command line as users drive it: CliRunner for behaviour, exit codes and messages."""

import json
import re

import pytest
from typer.testing import CliRunner

from ntlab.cli import app
from ntlab.report.views import num
from tests.report_checks import check_report

runner = CliRunner()
FAST = ["--steps", "20", "--eval-every", "10", "--batch-size", "16"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read(path):
    return json.loads(path.read_text())


def test_help_lists_every_train_option_with_its_default():
    result = invoke("train", "--help")
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", result.stdout))
    for option in (
        "--target",
        "--method",
        "--aux",
        "--lam",
        "--benchmark",
        "--steps",
        "--batch-size",
        "--lr",
        "--seed",
        "--device",
        "--out",
        "--preset",
        "--config",
    ):
        assert option in text
    steps = "quick: 300, default: 500, paper: 50000, nyuv2-paper: 16000, ssl-paper: 200000"
    assert f"default: from --preset ({steps})" in text
    assert "`ntlab methods`" in text and "stl, ew, fixed" in text


def test_top_level_help_names_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0 and "train" in result.stdout and "data" in result.stdout


def test_data_list_shows_domains_kinds_and_sizes(tiny_digits):
    result = runner.invoke(app, ["data", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    rows = {
        line.split("│")[1].strip(): line
        for line in result.stdout.splitlines()
        if line.count("│") > 5
    }
    for domain in ("mnist", "optdigits", "syn", "mnistm", "permlo"):
        assert domain in rows
    assert "real" in rows["mnist"] and "real" in rows["optdigits"]
    assert "generated" in rows["permlo"]
    assert re.search(r"│\s*80\s*│\s*50\s*│\s*60\s*│", rows["permlo"])  # train / val / test
    assert str(tiny_digits) in result.stdout.replace("\n", "")


def test_train_stl_writes_the_run_directory(tiny_digits, tmp_path):
    out = tmp_path / "a"
    result = invoke("train", "--method", "stl", "--target", "mnist", *FAST, "--out", out)
    assert result.exit_code == 0, result.output
    results, status, config = (
        read(out / "results.json"),
        read(out / "status.json"),
        read(out / "config.json"),
    )
    assert status["state"] == "completed"
    assert results["target"] == "mnist" and 0 <= results["test_score"] <= 100
    assert "transfer_gain" not in results
    assert config["train"]["steps"] == 20 and config["environment"]["torch"]
    lines = (out / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,task,split,metric,value"
    final = [row for row in lines if row.startswith("20,mnist,test,acc,")]
    assert float(final[0].split(",")[-1]) == pytest.approx(results["test_score"])
    assert "test acc" in result.stdout
    assert f"report: {out / 'report.html'}" in result.stdout
    check_report(
        out / "report.html", figures=1, texts=("Training curves", f"{results['test_score']:.2f}")
    )


def test_train_ew_reports_transfer_gain_against_a_cached_stl(tiny_digits, tmp_path):
    args = ["train", "--target", "optdigits", *FAST, "--seed", "3"]
    invoke(*args, "--method", "stl", "--out", tmp_path / "stl")
    result = invoke(*args, "--method", "ew", "--out", tmp_path / "ew")
    assert result.exit_code == 0, result.output
    res, stl = read(tmp_path / "ew" / "results.json"), read(tmp_path / "stl" / "results.json")
    assert res["stl"]["source"] == "cache"
    assert res["stl"]["test_score"] == stl["test_score"]
    assert res["transfer_gain"] == pytest.approx(res["test_score"] - stl["test_score"])
    assert res["aux"] == ["mnist", "syn", "mnistm", "permlo"]
    assert res["tg_se_kind"] == "paired" and res["effect"] in ("helps", "hurts", "within_noise")
    tg = f"{num(res['transfer_gain'], signed=True)} ± {num(res['tg_se'])}"
    # one run is one seed: its transfer is by TG against twice its paired test-set SE
    verdict = {"helps": "helps", "hurts": "hurts"}.get(res["effect"], "within noise")
    check_report(tmp_path / "ew" / "report.html", figures=1, texts=(tg, "stl (cache)", verdict))
    assert f"ew vs STL on optdigits: {tg.replace('−', '-')} points" in result.stdout


def test_same_command_twice_gives_identical_metrics(tiny_digits, tmp_path, monkeypatch):
    """Trained twice from scratch (each on an empty cache), the same command gives the same
    numbers; a third time, on the first cache, it reads them instead of training."""
    from tests.cache_home import private_home

    args = ("train", "--method", "fixed", "--lam", "0.5", "--target", "mnistm",
            "--aux", "mnist,syn", *FAST)  # fmt: skip
    for name in ("x", "y"):
        (tmp_path / f"home-{name}").mkdir()
        private_home(monkeypatch, tmp_path / f"home-{name}")
        assert invoke(*args, "--out", tmp_path / name).exit_code == 0
    assert invoke(*args, "--out", tmp_path / "z").exit_code == 0
    a, b, c = (read(tmp_path / name / "results.json") for name in ("x", "y", "z"))
    assert [r.pop("source") for r in (a, b, c)] == ["run", "run", "cache"]
    assert [r["stl"].pop("source") for r in (a, b, c)] == ["run", "run", "cache"]
    for r in (a, b, c):
        r.pop("duration_s")
    assert a == b == c
    assert (tmp_path / "y" / "metrics.csv").read_text() == (
        tmp_path / "z" / "metrics.csv"
    ).read_text()


def test_config_file_sets_options_and_the_command_line_wins(tiny_digits, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "fixed"\nlam = 0.25\nsteps = 12\naux = ["syn"]\n')
    out = tmp_path / "c"
    result = invoke(
        "train",
        "--target",
        "mnist",
        "--config",
        cfg,
        "--steps",
        "8",
        "--eval-every",
        "4",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    train = read(out / "config.json")["train"]
    assert (train["method"], train["lam"], train["aux"], train["steps"]) == (
        "fixed",
        0.25,
        ["syn"],
        8,
    )


def test_quick_preset_sets_the_budget(tiny_digits, tmp_path, monkeypatch):
    from ntlab.presets import PRESETS

    monkeypatch.setitem(PRESETS, "quick", {**PRESETS["quick"], "steps": 6, "eval_every": 3})
    out = tmp_path / "q"
    assert invoke("train", "--target", "syn", "--preset", "quick", "--out", out).exit_code == 0
    assert read(out / "results.json")["steps"] == 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmark", "nope"], "Invalid value for '--benchmark': 'nope' is not one of digits"),
        (["--target", "nope"], "unknown target 'nope'; choose one of: mnist"),
        (["--method", "nope"], "'nope' is not one of stl, ew, fixed"),
        (["--method", "fixed", "--lam", "-0.5"], "--lam must be a finite number ≥ 0"),
        (["--steps", "0"], "--steps must be an integer between 1 and"),
        (["--method", "ew", "--aux", "syn,mnist"], "--target mnist is also listed in --aux"),
        (["--aux", "syn,nope", "--method", "ew"], "unknown auxiliary task 'nope'"),
        (["--preset", "huge"], "'huge' is not one of quick, default, paper"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--weights", "/no/such/file.pt"], "--weights file /no/such/file.pt does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_digits, tmp_path, args, message):
    base = [a for a in ["--target", "mnist"] if "--target" not in args]
    out = tmp_path / "bad"
    result = invoke("train", *base, *args, "--out", out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()  # rejected before any run directory was made


def test_unprepared_data_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("NTLAB_HOME", str(tmp_path / "empty"))
    result = invoke("train", "--target", "mnist", "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "error: the digits benchmark is not prepared; run `ntlab data prepare digits`"
    )


def test_a_failure_inside_the_run_marks_status_failed(tiny_digits, tmp_path):
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "f"
    result = invoke("train", "--target", "mnist", "--weights", bad, *FAST, "--out", out)
    assert result.exit_code == 2
    assert "cannot read weights file" in result.stderr
    status = read(out / "status.json")
    assert status["state"] == "failed" and "cannot read weights file" in status["error"]
    assert not (out / "results.json").exists()
    check_report(
        out / "report.html", figures=0, texts=("did not complete", "cannot read weights file")
    )


def test_a_finished_run_is_not_overwritten_by_accident(tiny_digits, tmp_path):
    out = tmp_path / "o"
    assert invoke("train", "--target", "syn", *FAST, "--out", out).exit_code == 0
    again = invoke("train", "--target", "syn", *FAST, "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert invoke("train", "--target", "syn", *FAST, "--out", out, "--overwrite").exit_code == 0


def test_data_prepare_rejects_a_bad_domain_size():
    result = invoke("data", "prepare", "--train-size", "nope=3")
    assert result.exit_code == 2 and "--train-size expects DOMAIN=N" in result.stderr
