"""`ntlab affinity` as a user drives it: the measurements, the cache, scoring against a
pairwise run, the auxiliary-task selection, and bad input."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from ntlab.cli import app
from tests.cli.test_maps_cli import assert_figure, read
from tests.report_checks import check_report

runner = CliRunner()
TASKS = ["--tasks", "optdigits,mnist,syn"]
BUDGET = ["--steps", "8", "--batch-size", "8", "--eval-every", "4"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def measured(tiny_digits, tmp_path_factory):
    """A finished two-seed EW pairwise run over the three tasks, at the same budget."""
    out = tmp_path_factory.mktemp("pw") / "pairwise"
    result = invoke("pairwise", *TASKS, "--seeds", "0,1", *BUDGET, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_affinity_measures_every_pair_and_is_cached(tiny_digits, tmp_path):
    out = tmp_path / "a"
    args = ["affinity", *TASKS, *BUDGET, "--every", 4, "--held-out", 16]
    result = invoke(*args, "--out", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "affinity.csv")
    assert list(table.columns) == ["step", "target", "aux", "predictor", "value"]
    assert sorted(table["step"].unique()) == [4, 8]
    assert set(table["predictor"]) == {"lookahead", "lookahead-adam", "cosine", "shift"}
    assert len(table) == 2 * 6 * 4  # measurements × ordered pairs × predictors
    r = read(out / "results.json")
    assert r["measurements"] == 2 and r["source"] == "run"
    assert set(r["predictors"]["lookahead"]["optdigits"]) == {"mnist", "syn"}
    assert list(r["predictors"]) == ["lookahead", "lookahead-adam", "cosine", "shift", "two-level"]
    for p in r["predictors"]:
        assert_figure(out / f"affinity_{p}.png")
    check_report(out / "report.html", figures=5, texts=("Predictor: lookahead", "two-level"))
    assert "lookahead: target \\ aux" in result.stdout
    again = invoke(*args, "--out", tmp_path / "b")
    assert again.exit_code == 0, again.output
    assert read(tmp_path / "b" / "results.json")["source"] == "cache"
    assert pd.read_csv(tmp_path / "b" / "affinity.csv").equals(table)


def test_affinity_against_a_pairwise_run_scores_each_predictor(measured, tmp_path):
    out = tmp_path / "a"
    result = invoke(
        "affinity", *TASKS, *BUDGET, "--every", 4, "--held-out", 16, "--against", measured,
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = read(out / "results.json")["against"]
    assert r["cells"] == 6 and r["seeds"] == [0, 1]
    assert set(r["scores"]) == {"lookahead", "lookahead-adam", "cosine", "shift", "two-level"}
    assert r["best"] in r["scores"]
    for name, s in r["scores"].items():
        assert set(s["targets"]) == {"optdigits", "mnist", "syn"}
        assert (s["sign_share"] is None) == (name in ("shift", "two-level"))
    cells = pd.read_csv(out / "measured.csv")
    pw = pd.read_csv(measured / "pairwise.csv")
    want = pw.groupby(["target", "aux"])["tg"].mean()
    for row in cells.itertuples():
        assert row.tg == pytest.approx(want[(row.target, row.aux)])
    assert set(pd.read_csv(out / "scores.csv")["predictor"]) == set(r["scores"])
    assert_figure(out / "affinity_vs_measured.png")
    assert_figure(out / "affinity_scatter.png")
    check_report(out / "report.html", figures=7, texts=("ranks first", "Spearman"))
    assert "ceiling" in result.stdout


def test_select_trains_the_proposed_sets_and_all_of_them(tiny_digits, tmp_path):
    out = tmp_path / "s"
    result = invoke(
        "affinity", *TASKS, *BUDGET, "--every", 4, "--held-out", 16, "--select", 1, "--out", out
    )
    assert result.exit_code == 0, result.output
    selection = read(out / "results.json")["selection"]
    assert selection["k"] == 1 and selection["predictor"] == "lookahead"
    table = pd.read_csv(out / "affinity.csv")
    look = table[table["predictor"] == "lookahead"].groupby(["target", "aux"])["value"].mean()
    for target, row in selection["targets"].items():
        others = [t for t in ("optdigits", "mnist", "syn") if t != target]
        assert row["selected"] == [max(others, key=lambda a: look[(target, a)])]
        assert {"ew_selected", "ew_all", "forkmerge_selected", "forkmerge_all"} <= set(row)
    check_report(out / "report.html", texts=("Auxiliary-task selection",))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--every", "0"], "--every must be"),
        (["--every", "9"], "--every must be"),
        (["--held-out", "0"], "--held-out must be"),
        (["--select", "2"], "--select must be"),
        (["--against", "{tmp}/nowhere"], "is not a folder"),
        (["--against", "{pw}", "--steps", "12"], "measured with steps = 8, this affinity trains"),
        (["--against", "{tmp}"], "is not a run directory (it has no config.json)"),
    ],
)
def test_bad_input_exits_2_with_one_line(measured, tmp_path, extra, message):
    extra = [e.format(tmp=tmp_path, pw=measured) for e in extra]
    out = tmp_path / "bad"
    result = invoke("affinity", "--tasks", "optdigits,mnist", *BUDGET, *extra, "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (out / "results.json").exists()


def test_against_another_command_s_run_is_refused(measured, tmp_path):
    first = tmp_path / "a"
    assert invoke("affinity", *TASKS, *BUDGET, "--every", 4, "--out", first).exit_code == 0
    result = invoke("affinity", *TASKS, *BUDGET, "--against", first, "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert "is a run of `affinity`, not of `pairwise`" in result.stderr
