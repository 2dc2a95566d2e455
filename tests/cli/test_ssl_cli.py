"""`--benchmark ssl` end to end through the CLI, on stand-in IDX files in MNIST's names (700
training and 300 test images made from scikit-learn's digits), and its bad input."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from ntlab.data.mnist import write_stand_in_mnist
from ntlab.data.ssl import FASHION_DIR
from tests.cli.test_dense_cli import invoke
from tests.cli.test_imagelist_cli import one_line_error

TINY = ["--steps", "4", "--batch-size", "8", "--eval-every", "2", "--width", "8"]


@pytest.fixture(scope="module")
def idx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion")
    write_stand_in_mnist(folder, n_train=700, n_test=300)
    return folder


def test_compare_runs_stl_ew_and_forkmerge_and_reports_test_error(idx, tmp_path):
    out = tmp_path / "cmp"
    result = invoke(
        "compare", "--benchmark", "ssl", "--root", idx, "--labels", "100", "--target",
        "labels", "--methods", "stl,ew,forkmerge", *TINY, "--merge-every", "2", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "error" in result.stdout
    rows = json.loads((out / "results.json").read_text())
    text = json.dumps(rows)
    assert '"metric": "error"' in text and '"higher_is_better": false' in text
    assert set(rows["methods"]) == {"stl", "ew", "forkmerge"}
    stl = rows["methods"]["stl"]["test_score"]["mean"]
    for method in ("ew", "forkmerge"):  # lower error is better: TG = STL's error − the method's
        entry = rows["methods"][method]
        assert 0 <= entry["test_score"]["mean"] <= 100
        assert entry["tg"]["mean"] == pytest.approx(stl - entry["test_score"]["mean"])


def test_ew_trains_every_task_and_reports_each_task_s_metrics(idx, tmp_path):
    out = tmp_path / "ew"
    result = invoke(
        "train", "--benchmark", "ssl", "--root", idx, "--labels", "100", "--target", "labels",
        "--method", "ew", *TINY, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((out / "results.json").read_text())
    assert r["aux"] == ["rotation", "exemplar"]
    assert r["metric"] == "error" and r["tg_se_kind"] == "paired"
    assert r["target_metrics"]["test"]["error"] == pytest.approx(
        100 - r["target_metrics"]["test"]["acc"]
    )
    assert set(r["tasks"]["exemplar"]["test"]) == {"top1", "loss"}
    assert r["tasks"]["rotation"]["metric"] == "acc"
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["labels"] == 100 and config["train"]["root"] == str(idx)
    assert config["data"]["labels"] == 100 and config["data"]["base"] == "fashion"
    line = config["environment"]["command_line"]
    assert line[line.index("--labels") + 1] == "100"  # the command that reproduces the run


def test_data_prepare_ssl_checks_the_files_and_installs_nothing(idx, tmp_path):
    result = invoke("data", "prepare", "ssl", "--root", idx)
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())  # the line wraps where the temporary path is long
    assert "ready" in said and "700 training" in said
    missing = invoke("data", "prepare", "ssl", "--root", tmp_path / "none")
    one_line_error(missing, "apt-get install dataset-fashion-mnist")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--labels", "5"], "--labels must be a whole number of labelled images from 10"),
        (["--labels", "400"], "need 900 training images; the files have 700"),
        (["--base", "cifar"], "--base"),
        (["--root", "{tmp}/none"], "apt-get install dataset-fashion-mnist"),
        (["--root", "{tmp}/none", "--base", "mnist"], "pass --root DIR with the four MNIST"),
        (["--backbone", "resnet18", "--labels", "100"], "resnet18 takes RGB images"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(idx, tmp_path, args, fragment):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    root = [] if "--root" in args else ["--root", idx]
    result = invoke(
        "train", "--benchmark", "ssl", *root, *args, "--target", "labels", *TINY,
        "--out", tmp_path / "run",
    )  # fmt: skip
    one_line_error(result, fragment)
    assert not (tmp_path / "run" / "results.json").exists()


def test_damaged_and_mismatched_files_are_named(idx, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(idx, bad)
    data = (bad / "train-images-idx3-ubyte.gz").read_bytes()
    (bad / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    result = invoke("train", "--benchmark", "ssl", "--root", bad, "-t", "labels", *TINY)
    one_line_error(result, "train-images-idx3-ubyte.gz", "damaged")
    labels = bad / "train-labels-idx1-ubyte.gz"
    shutil.copy(idx / "train-images-idx3-ubyte.gz", bad / "train-images-idx3-ubyte.gz")
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8 + 3] = 12  # a label above 9
    labels.write_bytes(gzip.compress(bytes(raw)))
    result = invoke("train", "--benchmark", "ssl", "--root", bad, "-t", "labels", *TINY)
    one_line_error(result, "train-labels-idx1-ubyte.gz", "label above 9")


def test_ssl_options_do_not_apply_to_other_benchmarks(tiny_digits, tmp_path):
    result = invoke("train", "-t", "mnist", "--labels", "100", *TINY)
    one_line_error(result, "--labels does not apply to digits")


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist (.ci/run does)"
)
def test_the_real_fashion_mnist_is_found_where_debian_puts_it():
    result = invoke("data", "prepare", "ssl")
    assert result.exit_code == 0, result.output
    assert "60,000 training and 10,000 test images" in " ".join(result.stdout.split())


def test_the_analyses_take_tasks_with_views_or_say_why_not(idx, tmp_path):
    data = ["--benchmark", "ssl", "--root", idx, "--labels", "100", "--width", "8"]
    small = ["--batch-size", "8", "--eval-every", "2"]
    result = invoke(
        "affinity", "--tasks", "labels,exemplar", *data, *small, "--steps", "2", "--every", "2",
        "--held-out", "16", "--out", tmp_path / "aff",
    )  # fmt: skip
    assert result.exit_code == 0, result.output  # exemplar's held-out copies measured
    result = invoke(
        "gcs", "--target", "exemplar", "--aux", "rotation", *data, "--batch-size", "8",
        "--batches", "2", "--probe-steps", "2", "--pretrain-steps", "2", "--out", tmp_path / "g",
    )  # fmt: skip
    assert result.exit_code == 0, result.output  # a target with views, evaluated per sample
    tsne = invoke("tsne", "--target", "labels", *data, *small, "--steps", "2")
    one_line_error(tsne, "rotation is a 4-way classification")
