"""The multi-market benchmarks end to end through the CLI: a tiny AliExpress tree in
MTReclib's exact CSV format (four countries of 800 rows), every bad input refused with exit
code 2 and one line naming file:line, and the generated `markets`."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from ntlab.cli import app
from ntlab.data import aliexpress as ax
from tests.cli.test_imagelist_cli import one_line_error
from tests.data.test_markets import write_tree

runner = CliRunner()
TINY = ["--steps", "4", "--batch-size", "16", "--eval-every", "2", "--width", "4", "--threads", "1"]


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("aliexpress") / "data")


def test_train_ew_on_aliexpress_reports_auc_logloss_and_a_folded_tg(tree, tmp_path):
    out = tmp_path / "ew"
    result = invoke(
        "train", "--benchmark", "aliexpress", "--root", tree, "--target", "us_ctcvr",
        "--method", "ew", "--aux", "nl_ctr,nl_ctcvr,us_ctr", *TINY, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((out / "results.json").read_text())
    assert r["metric"] == "auc" and r["higher_is_better"] is True
    assert set(r["target_metrics"]["test"]) == {"auc", "logloss", "ctr_auc"}
    assert set(r["delta_m_over"]) == {"auc", "logloss"}
    assert r["tasks"]["nl_ctr"]["metric"] == "auc" and set(r["tasks"]["nl_ctr"]["test"]) == {
        "auc",
        "logloss",
    }
    assert r["tg_se_kind"] == "folds" and len(r["test_folds"]) == 20
    assert 0 <= r["test_score"] <= 100
    assert r["transfer_gain"] == pytest.approx(r["test_score"] - r["stl"]["test_score"])
    assert "test AUC" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["backbone"] == "esmm"


def test_forkmerge_and_compare_on_aliexpress_with_mmoe(tree, tmp_path):
    result = invoke(
        "forkmerge", "train", "--benchmark", "aliexpress", "--root", tree, "--target",
        "fr_ctcvr", "--aux", "es_ctcvr,nl_ctr", *TINY, "--merge-every", "2",
        "--out", tmp_path / "fm",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "fm" / "results.json").read_text())
    assert r["metric"] == "auc" and len(r["lambda_per_round"]) == 2
    result = invoke(
        "compare", "--benchmark", "aliexpress", "--root", tree, "--target", "nl_ctr",
        "--aux", "nl_ctcvr,es_ctr", "--methods", "stl,ew", "--backbone", "mmoe", *TINY,
        "--out", tmp_path / "cmp",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert r["metric"] == "auc" and set(r["methods"]) >= {"stl", "ew"}


def _edit(path, change):
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame)
    frame.to_csv(path, index=False)


def _table(change):
    """A damage that edits the file as a table (every value kept as written)."""
    return lambda path: _edit(path, change)


def _set(column, row, value):
    def change(frame):
        frame.loc[row, column] = value

    return _table(change)


def _both(row):
    def change(frame):
        frame.loc[row, "click"], frame.loc[row, "conversion"] = "0", "1"

    return _table(change)


def _line(number, change):
    """Edit line `number` (1: the header) of the file's text."""

    def damage(path):
        lines = path.read_text().splitlines()
        lines[number - 1] = change(lines[number - 1])
        path.write_text("\n".join(lines) + "\n")

    return damage


# case → (country, file, how the file is damaged, the line named, the message)
BAD = {
    "missing file": ("FR", "test.csv", None, None, "missing"),
    "missing column": ("NL", "train.csv", _table(lambda f: f.pop("numerical_7")),
                       1, "no column 'numerical_7'"),
    "non-integer categorical": ("ES", "train.csv", _set("categorical_3", 5, "abc"), 7,
                                "categorical_3 is 'abc', not an integer"),
    "categorical beyond int64": ("NL", "train.csv", _set("categorical_3", 5, "9" * 20),
                                 7, "not an integer within ±2⁶³"),
    "fractional categorical": ("ES", "test.csv", _set("categorical_16", 0, "2.5"), 2,
                               "categorical_16 is '2.5', not an integer"),
    "nan numerical": ("US", "train.csv", _set("numerical_10", 9, "nan"), 11,
                      "numerical_10 is 'nan', not a finite number"),
    "inf numerical": ("US", "test.csv", _set("numerical_63", 3, "inf"), 5,
                      "numerical_63 is 'inf', not a finite number"),
    "text numerical": ("NL", "test.csv", _set("numerical_2", 12, "n/a"), 14,
                       "numerical_2 is 'n/a', not a finite number"),
    "label 2": ("FR", "train.csv", _set("click", 3, "2"), 5, "click is '2', not 0 or 1"),
    "conversion without click": ("NL", "train.csv", _both(4), 6, "conversion without a click"),
    "extra field": ("US", "train.csv", _line(8, lambda t: t + ",7"), 8,
                    "83 fields, the header has 82"),
    "short row": ("ES", "test.csv", _line(3, lambda t: ",".join(t.split(",")[:40])), 3,
                  "numerical_24 is empty, not a finite number"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_ends_the_command_with_one_line_naming_file_and_line(case, tmp_path):
    root = write_tree(tmp_path / "ax")
    country, name, damage, line, message = BAD[case]
    path = ax.folder(root, country) / name
    if damage is None:
        path.unlink()
    else:
        damage(path)
    result = invoke(
        "train", "--benchmark", "aliexpress", "--root", root, "--target", "us_ctr", *TINY,
        "--out", tmp_path / "run",
    )  # fmt: skip
    error = one_line_error(result)
    assert f"{path}{f':{line}' if line else ''}: " in error, error
    assert message in error, error
    assert not (tmp_path / "run" / "results.json").exists()


def test_numericals_too_large_to_standardise_are_refused_by_column(tmp_path):
    root = write_tree(tmp_path / "ax")
    _set("numerical_5", 3, "1e307")(ax.folder(root, "ES") / "train.csv")
    result = invoke(
        "train", "--benchmark", "aliexpress", "--root", root, "--target", "us_ctr", *TINY,
        "--out", tmp_path / "run",
    )  # fmt: skip
    error = one_line_error(result)
    assert "numerical_5" in error and "too large to standardise" in error, error


def test_a_test_split_without_conversions_in_a_fold_is_refused(tmp_path):
    root = write_tree(tmp_path / "ax")
    path = ax.folder(root, "US") / "test.csv"
    _edit(path, lambda f: f.__setitem__("conversion", "0"))
    result = invoke(
        "train", "--benchmark", "aliexpress", "--root", root, "--target", "us_ctcvr", *TINY,
        "--out", tmp_path / "run",
    )  # fmt: skip
    error = one_line_error(result)
    assert "AliExpress_US" in error and "without a positive" in error and "conversion" in error


def test_wrong_backbones_and_missing_data_are_one_line_errors(tree, tiny_digits, monkeypatch):
    monkeypatch.delenv(ax.ENV, raising=False)
    base = ["train", "--target", "us_ctr", *TINY]
    error = one_line_error(invoke(*base, "--benchmark", "aliexpress", "--root", tree,
                                  "--backbone", "cnn"))  # fmt: skip
    assert "aliexpress needs a tabular backbone: esmm or mmoe" in error
    error = one_line_error(invoke(*base, "--benchmark", "aliexpress"))
    assert "no AliExpress folder given" in error and ax.ENV in error and "MTReclib" in error
    error = one_line_error(
        invoke(
            "train", "--benchmark", "digits", "--target", "mnist", "--backbone", "esmm", *TINY
        )  # fmt: skip
    )
    assert "tabular" in error and "digits" in error


def test_markets_unprepared_then_too_small_for_its_folds(ntlab_home, tmp_path):
    import shutil

    from ntlab.data.markets import MarketsConfig, markets_root, prepare_markets

    shutil.rmtree(markets_root(), ignore_errors=True)
    base = ["train", "--benchmark", "markets", "--target", "us_ctcvr", *TINY]
    error = one_line_error(invoke(*base, "--out", tmp_path / "a"))
    assert "run `ntlab data prepare markets`" in error
    error = one_line_error(invoke(*base, "--backbone", "resnet18", "--out", tmp_path / "b"))
    assert "markets needs a tabular backbone: esmm or mmoe" in error
    prepare_markets(MarketsConfig(rows=400))  # 20 test rows: one per fold
    error = one_line_error(invoke(*base, "--out", tmp_path / "c"))
    assert "fold" in error and "AliExpress_US" in error
    listing = invoke("data", "list")
    assert listing.exit_code == 0, listing.output
    assert "markets: GENERATED" in listing.stdout and "us_ctcvr" in listing.stdout
    assert "NTLAB_ALIEXPRESS" in listing.stdout
