"""`ntlab gcs`, `ntlab csd`, `ntlab tsne` as users drive them."""

import json

import matplotlib.image as mpimg
import pandas as pd
import pytest
from typer.testing import CliRunner

from ntlab.cli import app
from tests.report_checks import check_report

runner = CliRunner()
BUDGET = ["--target", "optdigits", "--aux", "mnist,syn", "--batch-size", "16", "--eval-every", "5"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read(path):
    return json.loads(path.read_text())


def assert_figure(path, min_width=300):
    image = mpimg.imread(path)
    assert image.shape[1] >= min_width and image.shape[0] >= 200
    assert image[..., :3].std() > 0.01  # not a blank canvas


@pytest.mark.parametrize("kind", ["task", "weight-decay"])
def test_gcs_writes_table_figure_and_results(tiny_digits, tmp_path, kind):
    out = tmp_path / "g"
    result = invoke(
        "gcs", *BUDGET, "--pretrain-steps", 10, "--batches", 3, "--lams", "0,0.5,1",
        "--aux-kind", kind, "--probe-steps", 3, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "gcs.csv")
    assert list(table.columns[:5]) == ["batch", "lam", "gcs", "tg", "tg_loss"]
    assert len(table) == 9 and set(table["aux_kind"]) == {kind}
    assert (table[table["lam"] == 0]["tg"] == 0).all()
    assert table["gcs"].between(-1, 1).all()
    results = read(out / "results.json")
    assert results["batches"] == 3 and results["aux_kind"] == kind
    assert results["aux"] == (["mnist", "syn"] if kind == "task" else [])
    per_batch = table.drop_duplicates("batch")
    assert results["share_conflicting"] == pytest.approx((per_batch["gcs"] < 0).mean())
    assert results["best_lam"] in (0.0, 0.5, 1.0)
    for lam, row in results["per_lam"].items():
        assert row["mean_tg"] == pytest.approx(table[table["lam"] == float(lam)]["tg"].mean())
        assert row["mean_tg_se"] >= 0 and row["effect"] in ("helps", "hurts", "within_noise")
        assert f"{row['mean_tg']:+.3f} ± {row['mean_tg_se']:.3f}" in result.stdout
    assert results["tg_se_kind"] == "batch pairs + validation images"
    assert f"best λ = {results['best_lam']:g}: mean one-step TG" in result.stdout
    assert read(out / "status.json")["state"] == "completed"
    assert_figure(out / "gcs.png")
    check_report(
        out / "report.html", figures=1, texts=("Gradient conflict", "conflicting yet helpful")
    )


def test_gcs_reuses_the_cached_stl_training(tiny_digits, tmp_path):
    args = [*BUDGET, "--pretrain-steps", 11, "--batches", 1, "--probe-steps", 0]
    assert invoke("gcs", *args, "--out", tmp_path / "a").exit_code == 0
    assert invoke("gcs", *args, "--out", tmp_path / "b").exit_code == 0
    assert read(tmp_path / "b" / "results.json")["pretrain"]["source"] == "cache"


def test_csd_writes_table_figure_and_regime(tiny_digits, tmp_path):
    out = tmp_path / "c"
    result = invoke(
        "csd", *BUDGET, "--steps", 8, "--lams", "0,0.5,2", "--seeds", "0,1", "--out", out
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "csd.csv")
    assert len(table) == 6
    assert table["csd"].between(0, 1).all()
    assert (table[table["lam"] == 0]["tg"] == 0).all()
    results = read(out / "results.json")
    tg = table[table["lam"] > 0].groupby("lam")["tg"]
    means, stds = tg.mean(), tg.std(ddof=1)
    helps, hurts = (means > 2 * stds).any(), (means < -2 * stds).any()
    expected = {
        (True, False): "positive",
        (True, True): "weak_negative",
        (False, True): "strong_negative",
        (False, False): "neutral",
    }[(bool(helps), bool(hurts))]
    assert results["regime"] == expected
    assert results["regime_basis"] == "2 seeds (mean beyond 2 seed std)"
    assert results["best_lam"] == means.idxmax()
    assert results["seeds"] == [0, 1]
    assert_figure(out / "csd.png")
    regime = {"neutral": "neutral (within noise)"}.get(expected, expected.replace("_", " "))
    assert f"csd: optdigits ← mnist, syn: {regime} " in result.stdout
    check_report(
        out / "report.html",
        figures=1,
        texts=(f"<td>{regime}</td>", "CSD on target test", "p ≈ 0.22", "regime rests on"),
    )


def test_tsne_from_a_train_run(tiny_digits, tmp_path):
    train_out = tmp_path / "train"
    assert (
        invoke("train", *BUDGET, "--method", "ew", "--steps", 6, "--out", train_out).exit_code == 0
    )
    out = tmp_path / "t"
    result = invoke(
        "tsne", *BUDGET, "--lams", "0,1", "--classes", 3, "--max-points", 60,
        "--from", train_out, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "tsne.csv")
    assert list(table.columns) == ["lam", "x", "y", "source", "label", "domain"]
    assert table["label"].nunique() == 3
    assert set(table["source"]) == {"target-train", "aux-train", "target-test"}
    results = read(out / "results.json")
    assert results["model"] == str(train_out)
    assert results["model_train"]["method"] == "ew"
    assert_figure(out / "tsne.png")
    check_report(out / "report.html", figures=1, texts=("aux share drawn",))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gcs", "--lams", "0,-0.5"], "every λ in --lams must be a finite number ≥ 0"),
        (["gcs", "--lams", ""], "--lams is empty"),
        (["gcs", "--lams", "0,x"], "'x' is not a number"),
        (["gcs", "--batches", "0"], "--batches must be an integer between 1"),
        (["gcs", "--aux-kind", "dropout"], "'dropout' is not one of task, weight-decay"),
        (["csd", "--lams", "0"], "at least one λ > 0"),
        (["csd", "--seeds", "0,0"], "lists a seed twice"),
        (["tsne", "--classes", "11"], "--classes must be between 1 and 10"),
        (["tsne", "--from", "."], "is not a finished ntlab run"),
        (["tsne", "--target", "nosuch"], "unknown target 'nosuch'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_digits, tmp_path, args, message):
    out = tmp_path / "bad"
    command, rest = args[0], args[1:]
    result = invoke(command, *BUDGET, *rest, "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (out / "results.json").exists()
