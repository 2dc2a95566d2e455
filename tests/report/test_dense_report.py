"""Reports of dense targets: every number labelled by its metric and direction, the training
curve in the target's primary metric, and the predictions figure (a tiny `scenes` build)."""

from __future__ import annotations

import html

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from ntlab.cli import app
from ntlab.data.scenes import ScenesConfig, prepare_scenes
from ntlab.report import figures as fig
from ntlab.report.views import Run, view_for

runner = CliRunner()
TINY = ["--steps", "6", "--batch-size", "4", "--eval-every", "3", "--width", "8"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def scenes(ntlab_home, fake_mnist):
    return prepare_scenes(ScenesConfig(train=48, val=24, test=24), fake_mnist[0], False)


def page_of(path) -> str:
    return html.unescape((path / "report.html").read_text())


@pytest.fixture(scope="module")
def train_run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("dense") / "train"
    result = invoke(
        "train", "--benchmark", "scenes", "--target", "segment", "--method", "ew",
        "--aux", "depth,normal", *TINY, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_a_dense_train_run_writes_a_few_predictions_beside_the_truth(train_run):
    blob = torch.load(train_run / "predictions.pt", weights_only=True)
    assert blob["target"] == "segment" and blob["image"].dtype == torch.uint8
    assert blob["image"].shape == (4, 3, 32, 32)
    tasks = blob["tasks"]
    assert {n: t["kind"] for n, t in tasks.items()} == {
        "segment": "segmentation", "depth": "depth", "normal": "normal",
    }  # fmt: skip
    seg = tasks["segment"]
    assert seg["pred"].shape == seg["truth"].shape == (4, 32, 32)
    assert int(seg["pred"].max()) < seg["classes"] == 11
    assert tasks["depth"]["pred"].shape == tasks["depth"]["truth"].shape == (4, 32, 32)
    norms = tasks["normal"]["pred"].float().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-2)  # unit vectors
    # small: the four images alone, not a view of the whole test split
    assert (train_run / "predictions.pt").stat().st_size < 200_000


def test_a_dense_train_report_labels_every_metric_with_its_direction(train_run):
    page = page_of(train_run)
    assert "val mIoU (%) ↑" in page and "test mIoU (%) ↑" in page
    assert "val acc" not in page and "test acc" not in page
    for label in ("abs err (primary)", "mean angle (°) (primary)", "≤ 11.25° (%)", "rel err"):
        assert label in page, label
    assert "↓ lower is better" in page and "↑ higher is better" in page
    assert "test CSD" not in page  # no classification task
    assert "Predictions beside the ground truth" in page
    assert (train_run / "predictions.png").is_file()
    run = Run.load(train_run)
    frame = view_for(run).tables(run)[0].frame
    depth = frame[frame["task"] == "depth"].set_index("metric")
    assert depth.loc["abs err (primary)", "better"] == "↓ lower is better"
    r = run.results
    assert depth.loc["rel err", "test"] == f"{r['tasks']['depth']['test']['rel_err']:.2f}"


def test_the_training_curve_reads_the_targets_primary_metric(train_run):
    run = Run.load(train_run)
    spec = next(s for s in view_for(run).figures(run) if s.name == "training")
    figure = spec.build()
    right = figure.axes[1]
    assert right.get_ylabel() == "target validation mIoU (%) ↑"
    curves = {line.get_label(): line for line in right.get_lines()}
    metrics = run.table("metrics.csv")
    miou = metrics[
        (metrics["task"] == "segment") & (metrics["split"] == "val") & (metrics["metric"] == "miou")
    ].sort_values("step")
    own = curves["val mIoU: segment (this run)"]
    assert list(own.get_ydata()) == pytest.approx(list(miou["value"]))
    assert "mIoU" in spec.caption


def test_a_dense_forkmerge_report_says_lower_is_better(scenes, tmp_path):
    out = tmp_path / "fm"
    result = invoke(
        "forkmerge", "train", "--benchmark", "scenes", "--target", "depth", *TINY,
        "--merge-every", "3", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    page = page_of(out)
    assert "val abs err ↓" in page and "test abs err ↓" in page
    assert "validation abs err (lower is better)" in page
    assert "Predictions beside the ground truth" in page
    assert torch.load(out / "predictions.pt", weights_only=True)["target"] == "depth"


def test_a_dense_compare_report_shows_each_target_metric(scenes, tmp_path):
    out = tmp_path / "cmp"
    result = invoke(
        "compare", "--benchmark", "scenes", "--target", "depth", "--methods", "stl,ew",
        *TINY, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    page = page_of(out)
    for header in ("test abs err ↓", "test rel err ↓", "Δm (%)"):
        assert header in page, header
    assert "test abs err; lower is better: STL − run" in page
    assert "accuracy" not in page.split("Transfer gain per method")[1].split("</figure>")[0]
    run = Run.load(out)
    frame = view_for(run).headline(run)
    ew = frame.set_index("method").loc["ew"]
    stat = run.results["methods"]["ew"]["metrics"]["rel_err"]
    assert ew["test rel err ↓"] == f"{stat['mean']:.2f}"


def test_the_predictions_figure_has_a_row_per_image_and_truth_beside_prediction():
    """Rows: images; columns: the image, then truth and prediction per task; segmentation on
    a fixed categorical map with ignored pixels masked, depth on one scale per image."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2, 8, 8), generator=g)
    labels[:, 0, 0] = -1
    depth = torch.rand(2, 8, 8, generator=g) + 1
    depth[:, 1, 1] = 0  # invalid
    normals = torch.nn.functional.normalize(torch.randn(2, 3, 8, 8, generator=g), dim=1)
    blob = {
        "image": torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=g),
        "target": "seg",
        "split": "test",
        "tasks": {
            "seg": {"kind": "segmentation", "truth": labels, "pred": labels, "classes": 5},
            "depth": {"kind": "depth", "truth": depth, "pred": depth * 2, "classes": None},
            "normal": {"kind": "normal", "truth": normals, "pred": normals, "classes": None},
        },
    }
    figure = fig.dense_predictions_figure(blob)
    assert len(figure.axes) == 2 * 7
    titles = [ax.get_title() for ax in figure.axes[:7]]
    assert titles == ["\nimage", "seg\ntruth", "seg\nprediction", "depth\ntruth",
                      "depth\nprediction", "normal\ntruth", "normal\nprediction"]  # fmt: skip
    seg_truth = figure.axes[1].get_images()[0]
    assert seg_truth.get_array().mask[0, 0]  # ignored pixel masked (drawn black)
    assert seg_truth.cmap.N == 5
    d_truth, d_pred = figure.axes[3].get_images()[0], figure.axes[4].get_images()[0]
    assert d_truth.norm.vmin == d_pred.norm.vmin and d_truth.norm.vmax == d_pred.norm.vmax
    assert d_truth.norm.vmax == pytest.approx(float((depth[0] * 2).max()))
    rgb = figure.axes[5].get_images()[0].get_array()
    assert rgb.min() >= 0 and rgb.max() <= 1


def test_old_results_without_a_metric_are_labelled_as_accuracy():
    from ntlab.report.views import _model_rows, score_header

    r = {"method": "ew", "val_score": 61.6, "test_score": 64.8}
    assert score_header(r, "val") == "val acc (%) ↑"
    assert list(pd.DataFrame(_model_rows(r, "ew")).columns[1:3]) == [
        "val acc (%) ↑",
        "test acc (%) ↑",
    ]
    assert fig.tg_axis_label() == "TG vs STL (test accuracy points)"
