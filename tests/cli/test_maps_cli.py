"""`ntlab sweep`, `ntlab pairwise`, `ntlab ternary` as users drive them."""

import json

import matplotlib.image as mpimg
import pandas as pd
import pytest
from typer.testing import CliRunner

import ntlab.analysis.pairwise as pw
from ntlab.cli import app
from tests.report_checks import check_report

runner = CliRunner()
BUDGET = ["--steps", "8", "--batch-size", "16", "--eval-every", "4", "--merge-every", "4"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read(path):
    return json.loads(path.read_text())


def assert_figure(path):
    image = mpimg.imread(path)
    assert image.shape[0] >= 200 and image.shape[1] >= 300
    assert image[..., :3].std() > 0.01


def test_sweep_with_forkmerge(tiny_digits, tmp_path):
    out = tmp_path / "s"
    result = invoke(
        "sweep", "--target", "optdigits", "--aux", "mnist,syn", "--lams", "0,0.5,1",
        "--seeds", "0,1", "--with-forkmerge", *BUDGET, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "sweep.csv")
    fixed = table[table["method"] == "fixed"]
    assert len(fixed) == 6 and len(table[table["method"] == "forkmerge"]) == 2
    assert (fixed[fixed["lam"] == 0]["tg"] == 0).all()
    results = read(out / "results.json")
    chosen = fixed.sort_values(["seed", "val_score", "lam"], ascending=[True, False, True])
    chosen = chosen.groupby("seed").first()
    assert results["grid_search"]["lam_per_seed"] == chosen["lam"].tolist()
    assert results["grid_search"]["tg"]["mean"] == pytest.approx(chosen["tg"].mean())
    assert results["regime"] in ("positive", "weak_negative", "strong_negative", "neutral")
    assert results["regime_basis"] == "2 seeds (mean beyond 2 seed std)"
    assert set(results["effect_per_lam"]) == {"0.5", "1"}
    fm = table[table["method"] == "forkmerge"]
    assert results["forkmerge"]["tg"]["mean"] == pytest.approx(fm["tg"].mean())
    assert_figure(out / "sweep.png")
    check_report(
        out / "report.html", figures=1, texts=("grid search", "forkmerge", "Transfer regime")
    )


PAIRS = ["--domains", "optdigits,mnist,syn", "--method", "ew,forkmerge", *BUDGET]


def test_pairwise_runs_every_cell_then_reuses_the_cache(tiny_digits, tmp_path):
    first = tmp_path / "p1"
    result = invoke("pairwise", *PAIRS, "--out", first)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(first / "pairwise.csv")
    assert len(table) == 3 * 2 * 2
    assert set(zip(table["target"], table["aux"])) == {
        (t, a)
        for t in ("optdigits", "mnist", "syn")
        for a in ("optdigits", "mnist", "syn")
        if t != a
    }
    assert (table["tg"] - (table["score"] - table["stl_score"])).abs().max() < 1e-9
    assert (table["tg_se_kind"] == "paired").all() and (table["tg_se"] >= 0).all()
    results = read(first / "results.json")
    for cell in results["methods"]["forkmerge"]["cells_tg"].values():
        assert cell["se_kind"] == "paired" and cell["seeds"] == 1
        bound = 2 * cell["se"]
        noise = "helps" if cell["mean"] > bound else "hurts" if cell["mean"] < -bound else None
        assert cell["effect"] == (noise or "within_noise")
    assert "±" in result.stdout and "pairs within noise" in result.stdout
    for m in ("ew", "forkmerge"):
        means = table[table["method"] == m].groupby(["target", "aux"])["tg"].mean()
        assert results["methods"][m]["negative_cells"] == int((means < 0).sum())
        effects = results["methods"][m]["cells_tg"].values()
        assert results["methods"][m]["hurt_cells"] == sum(c["effect"] == "hurts" for c in effects)
        assert results["methods"][m]["helped_cells"] == sum(c["effect"] == "helps" for c in effects)
        assert_figure(first / f"pairwise_{m}.png")
    check_report(first / "report.html", figures=2, texts=("Regime per target",))
    assert set(results["methods"]["ew"]["regime_per_target"]) == {"optdigits", "mnist", "syn"}
    # The same map again (another folder): every cell comes from the cache.
    second = tmp_path / "p2"
    assert invoke("pairwise", *PAIRS, "--out", second).exit_code == 0
    again = read(second / "results.json")
    assert again["cells_trained"] == 0 and again["cells_from_cache"] == 12
    assert pd.read_csv(second / "pairwise.csv")["tg"].tolist() == table["tg"].tolist()


def test_pairwise_resume_skips_finished_cells(tiny_digits, tmp_path, monkeypatch):
    out = tmp_path / "p"
    args = ["--domains", "optdigits,mnist,syn", "--method", "ew", *BUDGET, "--seeds", "3"]
    real, calls = pw.run_cell, []

    def dies_after_two(base, cell, fm, on_step=None):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(cell.key())
        return real(base, cell, fm, on_step)

    monkeypatch.setattr(pw, "run_cell", dies_after_two)
    result = invoke("pairwise", *args, "--out", out)
    assert result.exit_code == 130
    assert read(out / "status.json")["state"] == "failed"
    assert not (out / "results.json").exists() and not (out / "pairwise.csv").exists()
    assert len(pd.read_csv(out / "checkpoints" / "cells.csv")) == 2
    check_report(
        out / "report.html",
        figures=1,
        texts=("did not complete", "interrupted", "checkpoints/cells.csv"),
    )

    resumed = []

    def counting(base, cell, fm, on_step=None):
        resumed.append(cell.key())
        return real(base, cell, fm, on_step)

    monkeypatch.setattr(pw, "run_cell", counting)
    result = invoke("pairwise", *args, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert len(resumed) == 4 and not set(resumed) & set(calls)
    results = read(out / "results.json")
    assert results["cells_resumed"] == 2
    assert len(pd.read_csv(out / "pairwise.csv")) == 6


def fake_cell(base, cell, fm, on_step=None):
    """A pairwise cell without training: EW loses 5.4 ± 0.1, ForkMerge returns STL exactly."""
    tg = 0.0 if cell.method == "forkmerge" else -5.4 - 0.1 * cell.seed
    return {
        "target": cell.target, "aux": cell.aux, "method": cell.method, "seed": cell.seed,
        "score": 90.0 + tg, "stl_score": 90.0, "tg": tg, "val_score": 90.0, "stl_val_score": 90.0,
        "source": "run",
    }  # fmt: skip


def test_pairwise_forkmerge_at_exactly_stl_is_neutral_not_strong_negative(
    tiny_digits, tmp_path, monkeypatch
):
    monkeypatch.setattr(pw, "run_cell", fake_cell)
    out = tmp_path / "p0"
    result = invoke(
        "pairwise", "--domains", "optdigits,mnist", "--method", "ew,forkmerge",
        *BUDGET, "--seeds", "0,1,2", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = read(out / "results.json")
    fm = results["methods"]["forkmerge"]
    assert fm["regime_per_target"] == {"optdigits": "neutral", "mnist": "neutral"}
    assert results["methods"]["ew"]["regime_per_target"]["mnist"] == "strong_negative"
    assert {c["effect"] for c in fm["cells_tg"].values()} == {"within_noise"}
    assert results["regime_basis"] == "3 seeds (mean beyond 2 seed std)"
    assert "p ≈ 0.074" in results["regime_rule"]
    fm_table = result.stdout[result.stdout.index("forkmerge: TG") :]
    assert "neutral (within noise)" in fm_table and "strong negative" not in fm_table
    assert "|t| > 3.46" in result.stdout  # the printed criterion
    page = check_report(out / "report.html", figures=2, texts=("neutral (within noise)",))
    for target in ("optdigits", "mnist"):  # the regime table: EW strong negative, ForkMerge not
        row = f"<tr><td>{target}</td><td>strong negative</td><td>neutral (within noise)</td></tr>"
        assert row in page
    assert "p ≈ 0.074" in page


def test_sweep_with_one_seed_judges_by_the_test_set_se(tiny_digits, tmp_path, monkeypatch):
    def exactly_stl(base, lams, seeds, on_run=None, done=None, on_row=None, skip=()):
        return pd.DataFrame(
            [
                {"lam": lam, "seed": s, "val_score": 90.0, "test_score": 90.0, "tg": 0.0,
                 "tg_se": 0.0, "tg_se_kind": "paired", "test_n": 2000, "tg_val": 0.0,
                 "csd": 0.1, "source": "run"}
                for s in seeds
                for lam in lams
            ]
        )  # fmt: skip

    import ntlab.analysis.sweep as sw

    monkeypatch.setattr(sw, "lambda_grid_table", exactly_stl)
    out = tmp_path / "s1"
    result = invoke(
        "sweep", "--target", "optdigits", "--aux", "mnist", "--lams", "0,0.5,1", *BUDGET,
        "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = read(out / "results.json")
    assert results["regime"] == "neutral"  # every λ exactly STL: was "strong_negative"
    assert results["regime_basis"] == "1 seed (TG beyond 2 test-set SE (paired))"
    assert "neutral (within noise)" in result.stdout and "strong" not in result.stdout
    assert "+0.00 ± 0.00" in result.stdout and "within noise" in result.stdout
    assert "(within noise, 1 seed, paired test-set SE)" in result.stdout
    check_report(
        out / "report.html", texts=("neutral (within noise)", "1 seed (TG beyond 2 test-set SE")
    )


def test_ternary_writes_the_simplex(tiny_digits, tmp_path):
    out = tmp_path / "t3"
    result = invoke(
        "ternary", "--target", "optdigits", "--aux", "mnist,syn", "--resolution", 4,
        "--steps", 6, "--batch-size", 16, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "ternary.csv")
    assert list(table.columns[:6]) == ["w0", "w1", "w2", "val_score", "test_score", "tg"]
    assert len(table) == 15
    assert ((table[["w0", "w1", "w2"]].sum(axis=1) - 1).abs() < 1e-9).all()
    results = read(out / "results.json")
    corner = table[table["w0"] == 1.0].iloc[0]
    assert corner["test_score"] == pytest.approx(results["branches"][0]["test_score"])
    assert corner["val_score"] == pytest.approx(results["branches"][0]["val_score"])
    assert results["best"]["val_score"] == pytest.approx(table["val_score"].max())
    assert {"tg_se", "tg_se_kind", "effect"} <= set(results["best"])
    assert results["corners"]["optdigits=1"] == {
        "test_score": corner["test_score"], "tg": 0.0, "tg_se": 0.0, "tg_se_kind": "paired",
        "seeds": 1, "effect": "within_noise",
    }  # fmt: skip
    # the terminal says it with its noise: the target-alone corner is the STL run
    assert "+0.00 ± 0.00" in result.stdout and "within noise" in result.stdout
    words = "within noise" if results["best"]["effect"] == "within_noise" else "beyond noise"
    best = results["best"]
    assert (
        f"{best['tg']:+.2f} ± {best['tg_se']:.2f} points ({words}, 1 seed, paired test-set SE)"
        in (result.stdout.replace("\n", " "))
    )
    assert_figure(out / "ternary.png")
    check_report(
        out / "report.html",
        figures=1,
        texts=("best on validation", "corner: optdigits=1,mnist=1", "within noise", "± 0.00"),
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pairwise", "--domains", "mnist,nosuch"], "'nosuch', which is not a domain"),
        (["pairwise", "--domains", "mnist"], "at least two domains"),
        (["pairwise", "--method", "ew,pcgrad"], "unknown pairwise method 'pcgrad'"),
        (["pairwise", "--resume"], "nothing to resume"),
        (["ternary", "--target", "optdigits", "--aux", "mnist,syn", "--resolution", "0"],
         "--resolution must be at least 1"),
        (["ternary", "--target", "optdigits", "--aux", "mnist"], "exactly two auxiliary"),
        (["ternary", "--target", "optdigits", "--aux", "mnist,optdigits"], "also listed in --aux"),
        (["sweep", "--target", "optdigits", "--lams", "0"], "at least one λ > 0"),
        (["sweep", "--target", "optdigits", "--lams", "0,1", "--seeds", "a"], "not an integer"),
        (["sweep", "--target", "optdigits", "--with-forkmerge", "--merge-every", "99"],
         "--merge-every must be between 1"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(tiny_digits, tmp_path, args, message):
    out = tmp_path / "bad"
    result = invoke(*args, "--steps", 8, "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (out / "results.json").exists()
