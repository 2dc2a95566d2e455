"""`ntlab compare` and `ntlab train --method` with every method name, as users drive them."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from ntlab.analysis.compare import method_names
from ntlab.cli import app
from tests.report_checks import check_report

runner = CliRunner()
BUDGET = ["--steps", "6", "--batch-size", "8", "--eval-every", "6", "--merge-every", "3"]
ARGS = ["--target", "optdigits", "--aux", "mnist,syn", *BUDGET]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read(path):
    return json.loads(path.read_text())


def test_compare_runs_every_method_with_the_same_budget_and_seeds(tiny_digits, tmp_path):
    out = tmp_path / "cmp"
    result = invoke(
        "compare", *ARGS, "--methods", "all", "--seeds", "0,1", "--lams", "0,1", "--out", out
    )  # noqa: E501
    assert result.exit_code == 0, result.output
    tidy = pd.read_csv(out / "compare.csv")
    assert list(tidy.columns) == ["method", "seed", "metric", "value"]
    methods = [m for m in method_names() if m != "fixed"]
    assert set(tidy["method"]) == set(methods)
    assert tidy.groupby("method")["seed"].nunique().eq(2).all()
    assert tidy["value"].notna().all() and (tidy["value"].abs() < 1e6).all()
    results = read(out / "results.json")
    stats = results["methods"]
    tg = tidy[tidy["metric"] == "tg"].groupby("method")["value"]
    for m in methods:
        assert stats[m]["tg"]["mean"] == pytest.approx(tg.mean()[m])
        assert stats[m]["tg"]["std"] == pytest.approx(tg.std(ddof=1)[m])
    assert stats["stl"]["tg"]["mean"] == 0
    assert results["ranking"] == sorted(stats, key=lambda m: -stats[m]["delta_m"]["mean"])
    assert results["forkmerge_rank"] == results["ranking"].index("forkmerge") + 1
    assert len(stats["grid-search"]["lam_per_seed"]) == 2
    # Δm with one target metric: the relative change of accuracy against STL, in percent.
    acc = tidy[tidy["metric"] == "test_score"].set_index(["method", "seed"])["value"]
    dm = tidy[tidy["metric"] == "delta_m"].set_index(["method", "seed"])["value"]
    assert dm[("ew", 1)] == pytest.approx(
        100 * (acc[("ew", 1)] - acc[("stl", 1)]) / acc[("stl", 1)]
    )
    lines = result.stdout.splitlines()
    order = [
        next(i for i, line in enumerate(lines) if f"│ {m} " in line) for m in results["ranking"]
    ]
    assert order == sorted(order)  # the printed table is sorted by Δm
    check_report(
        out / "report.html", figures=1, texts=("Transfer gain per method", "grid-search (λ = ")
    )

    again = invoke(
        "compare",
        *ARGS,
        "--methods",
        "all",
        "--seeds",
        "0,1",
        "--lams",
        "0,1",
        "--out",
        tmp_path / "again",
    )  # noqa: E501
    assert again.exit_code == 0 and read(tmp_path / "again" / "results.json")["runs_trained"] == 0


@pytest.mark.parametrize("method", ["grid-search", "forkmerge", "pcgrad"])
def test_train_accepts_every_method_name(tiny_digits, tmp_path, method):
    out = tmp_path / method
    result = invoke("train", *ARGS, "--method", method, "--out", out)
    assert result.exit_code == 0, result.output
    results = read(out / "results.json")
    assert results["method"] == method
    assert results["transfer_gain"] == pytest.approx(
        results["test_score"] - results["stl"]["test_score"]
    )
    check_report(out / "report.html")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--target", "optdigits", "--method", "nosuch"],
            "'nosuch' is not one of stl, ew, fixed",
        ),
        (["compare", "--target", "optdigits", "--methods", "ew,nosuch"], "unknown method 'nosuch'"),
        (["compare", "--target", "optdigits", "--methods", ","], "--methods is empty"),
        (["compare", "--target", "optdigits", "--methods", "ew,ew"], "lists a method twice"),
        (["compare", "--target", "optdigits", "--seeds", "x"], "not an integer"),
        (["compare", "--target", "optdigits", "--lams", "-1"], "every λ in --lams must be"),
        (["compare", "--target", "optdigits", "--merge-every", "999999"], "--merge-every"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_digits, tmp_path, args, message):
    result = invoke(*args, "--out", tmp_path / "x")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "results.json").exists()
    names = result.stderr if "nosuch" in message else ""
    for name in method_names() if names else []:
        assert name in names


def test_compare_forkmerge_at_exactly_stl_is_neutral(tiny_digits, tmp_path, monkeypatch):
    """A method that returns STL exactly on every seed is neutral, not negative transfer; EW
    at −5.4 ± 0.1 hurts beyond its seed noise (trainings replaced by fixed rows)."""
    import ntlab.analysis.compare as cmp

    def fake_row(base, method, seed, fm, lams, on_run=None):
        tg = {"stl": 0.0, "forkmerge": 0.0, "ew": -5.4 - 0.1 * seed}[method]
        return {
            "method": method, "seed": seed, "val_score": 90.0, "test_score": 90.0 + tg,
            "stl_val_score": 90.0, "stl_test_score": 90.0, "tg": tg, "tg_val": 0.0, "source": "run",
        }  # fmt: skip

    monkeypatch.setattr(cmp, "method_row", fake_row)
    out = tmp_path / "cmp0"
    result = invoke("compare", *ARGS, "--methods", "ew,forkmerge", "--seeds", "0,1,2", "--out", out)
    assert result.exit_code == 0, result.output
    results = read(out / "results.json")
    assert results["methods"]["forkmerge"]["effect"] == "within_noise"
    assert results["methods"]["ew"]["effect"] == "hurts"
    assert results["regime_basis"] == "3 seeds (mean beyond 2 seed std)"
    line = next(x for x in result.stdout.splitlines() if "│ forkmerge" in x)
    assert "within noise" in line and "negative" not in line and "hurts" not in line
    assert "hurts" in next(x for x in result.stdout.splitlines() if "│ ew" in x)
    assert "ForkMerge vs STL on optdigits: +0.00 ± 0.00 points (within noise, 3 seeds)" in (
        result.stdout
    )
    page = check_report(out / "report.html", texts=("p ≈ 0.074",))
    assert '<td class="num">+0.00</td><td>within noise</td>' in page
    assert '<td class="num">−5.50 ± 0.10</td><td>hurts</td>' in page
