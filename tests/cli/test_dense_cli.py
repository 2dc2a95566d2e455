"""Dense benchmarks end to end through the CLI: a tiny `scenes` build and a tiny NYUv2 tree
in MTAN's exact layout (12 + 6 files at 36 × 48)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from ntlab.cli import app
from ntlab.data.scenes import ScenesConfig, prepare_scenes
from tests.data.test_nyuv2 import BAD, write_tree

runner = CliRunner()
TINY = ["--steps", "6", "--batch-size", "4", "--eval-every", "3", "--width", "8"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("nyu") / "nyuv2")


@pytest.fixture(scope="module")
def scenes(ntlab_home, fake_mnist):
    return prepare_scenes(ScenesConfig(train=48, val=24, test=24), fake_mnist[0], False)


def test_nyuv2_train_reports_every_metric_of_the_target_and_tg_in_its_primary(nyu, tmp_path):
    out = tmp_path / "train"
    result = invoke(
        "train", "--benchmark", "nyuv2", "--root", nyu, "--target", "segmentation",
        "--method", "ew", "--aux", "depth,normal", *TINY, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((out / "results.json").read_text())
    assert r["metric"] == "miou" and r["higher_is_better"] is True
    assert set(r["target_metrics"]["test"]) == {"miou", "pixel_acc"}
    assert (
        r["tasks"]["depth"]["metric"] == "abs_err"
        and r["tasks"]["depth"]["higher_is_better"] is False
    )
    assert set(r["tasks"]["normal"]["test"]) >= {"mean_angle", "median_angle", "within_11.25"}
    assert r["transfer_gain"] == pytest.approx(r["test_score"] - r["stl"]["test_score"])
    assert r["tg_se_kind"] == "folds" and len(r["test_folds"]) == 6  # one fold per test image
    assert "test mIoU" in result.stdout and "points" in result.stdout


def test_nyuv2_depth_target_is_compared_lower_is_better(nyu, tmp_path):
    out = tmp_path / "fm"
    result = invoke(
        "forkmerge", "train", "--benchmark", "nyuv2", "--root", nyu, "--target", "depth",
        *TINY, "--merge-every", "3", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((out / "results.json").read_text())
    assert r["metric"] == "abs_err" and r["higher_is_better"] is False
    assert r["transfer_gain"] == pytest.approx(r["stl"]["test_score"] - r["test_score"])
    assert "test abs err ↓" in result.stdout
    assert len(r["lambda_per_round"]) == 2


def test_nyuv2_pairwise_over_tasks_and_compare(nyu, tmp_path):
    result = invoke(
        "pairwise", "--benchmark", "nyuv2", "--root", nyu, "--tasks", "segmentation,depth",
        *TINY, "--out", tmp_path / "pw",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "pw" / "results.json").read_text())
    assert r["domains"] == ["segmentation", "depth"] and r["metric"] == "miou"
    result = invoke(
        "compare", "--benchmark", "nyuv2", "--root", nyu, "--target", "normal",
        "--methods", "stl,ew,forkmerge", *TINY, "--out", tmp_path / "cmp",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert r["metric"] == "mean_angle" and len(r["delta_m_over"]) == 5
    dm = [r["methods"][m]["delta_m"]["mean"] for m in r["ranking"]]
    assert dm == sorted(dm, reverse=True)  # ranked by Δm
    assert "mean angle ↓" in result.stdout


@pytest.mark.parametrize(
    "case", ["missing modality", "nan depth", "label 13", "wrong shape", "damaged"]
)
def test_a_bad_nyuv2_file_ends_the_command_before_training_naming_it(tmp_path, case):
    root = write_tree(tmp_path / "nyuv2")
    damage, message = BAD[case]
    path = damage(root)
    result = invoke(
        "train", "--benchmark", "nyuv2", "--root", root, "--target", "segmentation", *TINY,
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and re.search(message, lines[0]), lines
    assert not (tmp_path / "run" / "results.json").exists()


def test_scenes_forkmerge_and_compare_show_miou_pixel_accuracy_and_delta_m(scenes, tmp_path):
    result = invoke(
        "forkmerge", "train", "--benchmark", "scenes", "--target", "segment",
        "--aux", "depth,normal", *TINY, "--merge-every", "3", "--out", tmp_path / "fm",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "fm" / "results.json").read_text())
    assert set(r["target_metrics"]["test"]) == {"miou", "pixel_acc"}
    assert isinstance(r["delta_m"], float) and isinstance(r["ew"]["delta_m"], float)
    assert "segment, test: mIoU" in result.stdout and "pixel acc" in result.stdout
    assert "Δm vs STL" in result.stdout
    result = invoke(
        "compare", "--benchmark", "scenes", "--target", "segment", "--methods", "stl,ew,pcgrad",
        *TINY, "--out", tmp_path / "cmp",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert set(r["methods"]["ew"]["metrics"]) == {"miou", "pixel_acc"}
    assert r["methods"]["stl"]["delta_m"]["mean"] == 0
    for header in ("test mIoU", "pixel acc", "Δm"):
        assert header in result.stdout


def test_csd_and_tsne_refuse_a_dense_target(scenes):
    for command in ("csd", "tsne"):
        result = invoke(command, "--benchmark", "scenes", "--target", "depth", *TINY)
        assert result.exit_code == 2
        assert "needs a classification target" in result.stderr


def test_nyuv2_sweep_ternary_and_gcs_run_in_the_targets_metric(nyu, tmp_path):
    common = ["--benchmark", "nyuv2", "--root", nyu, "--batch-size", "4", "--width", "8"]
    result = invoke(
        "sweep", *common, "--steps", "6", "--target", "depth", "--aux", "segmentation",
        "--lams", "0,0.5", "--out", tmp_path / "sw",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert r["metric"] == "abs_err" and "val abs err ↓" in result.stdout
    result = invoke(
        "ternary", *common, "--steps", "6", "--target", "depth",
        "--aux", "segmentation,normal", "--out", tmp_path / "tn",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "tn" / "results.json").read_text())
    assert r["best"]["tg_se_kind"] == "folds"
    result = invoke(
        "gcs", *common, "--pretrain-steps", "6", "--target", "normal", "--batches", "3",
        "--probe-steps", "2", "--out", tmp_path / "gcs",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "gcs" / "results.json").read_text())
    assert r["metric"] == "mean_angle" and r["tg_se_kind"] == "batch pairs"
    assert "degrees on validation" in result.stdout


def test_affinity_on_dense_tasks_that_share_their_inputs(scenes, tmp_path):
    """Dense tasks on the same images: the lookahead and the cosine are measured per pair in
    each task's own loss; the inputs are shared, so the shift is 0 for every pair."""
    out = tmp_path / "aff"
    result = invoke("affinity", "--benchmark", "scenes", "--tasks", "all", *TINY, "--every", 3,
                    "--held-out", 8, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(out / "affinity.csv")
    assert set(table["target"]) == {"segment", "depth", "normal"} and len(table) == 2 * 6 * 4
    assert (table.loc[table["predictor"] == "shift", "value"] == 0).all()
    look = table[table["predictor"] == "lookahead"]["value"]
    assert look.notna().all() and (look != 0).any()
