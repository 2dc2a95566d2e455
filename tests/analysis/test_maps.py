"""Sweep, pairwise and ternary: grid-search choice, cells, summaries, the simplex table."""

import pandas as pd
import pytest

from ntlab.analysis.pairwise import (
    check_domains,
    check_methods,
    pairwise_cells,
    pairwise_summary,
    tg_matrix,
)
from ntlab.analysis.sweep import grid_search_choice, sweep_summary
from ntlab.analysis.ternary import check_resolution, ternary_summary, ternary_table
from ntlab.core.forkmerge import BranchSpec, ForkMergeOptions, cached_forkmerge, joint_branches
from ntlab.core.runner import TrainConfig, cached_run, stl_config
from ntlab.core.train import LossTerm
from ntlab.errors import NtlabError


def sweep_rows():
    # seed 0: val best at λ=0.5 (test TG −0.5); seed 1: val tie 0.25/1 → the smaller λ.
    return pd.DataFrame(
        {
            "lam": [0.0, 0.25, 0.5, 1.0] * 2,
            "seed": [0] * 4 + [1] * 4,
            "val_score": [90, 91, 92, 89, 90, 93, 91, 93],
            "test_score": [90, 91, 89.5, 88, 91, 92, 90, 89],
            "tg": [0, 1, -0.5, -2, 0, 1, -1, -2],
            "tg_val": [0, 1, 2, -1, 0, 3, 1, 3],
            "csd": [0.1] * 8,
        }
    )


def test_grid_search_picks_lambda_on_validation_per_seed():
    chosen = grid_search_choice(sweep_rows())
    assert chosen["lam"].tolist() == [0.5, 0.25]
    assert chosen["tg"].tolist() == [-0.5, 1.0]


def test_sweep_summary_regime_best_and_grid_search():
    fm = pd.DataFrame({"seed": [0, 1], "tg": [0.5, 1.5], "test_score": [90.5, 92.5]})
    summary = sweep_summary(sweep_rows(), fm)
    assert summary["regime"] == "weak_negative"  # λ=0.25 helps, λ=0.5 and 1 hurt
    assert summary["best_lam"] == 0.25
    assert summary["grid_search"]["tg"]["mean"] == pytest.approx(0.25)
    assert summary["grid_search"]["lam_per_seed"] == [0.5, 0.25]
    assert summary["forkmerge"]["tg"] == {
        "mean": 1.0, "std": pytest.approx(2**0.5 / 2), "seeds": 2, "effect": "within_noise"
    }  # fmt: skip
    # λ=0.5: −0.75 ± 0.35 is beyond 2 std; so are the seed-constant +1 (0.25) and −2 (1).
    assert summary["effect_per_lam"] == {"0.25": "helps", "0.5": "hurts", "1": "hurts"}
    assert summary["regime_basis"] == "2 seeds (mean beyond 2 seed std)"
    assert "|t| > 2.83" in summary["regime_rule"]
    # grid search −0.5, +1 and ForkMerge +0.5, +1.5 are within their seed noise
    assert summary["grid_search"]["effect"] == summary["forkmerge"]["effect"] == "within_noise"


def test_sweep_regime_is_neutral_when_nothing_clears_the_noise():
    rows = sweep_rows().assign(tg=[0, 1, -0.5, -2, 0, -0.8, 0.5, 1.0])
    summary = sweep_summary(rows)
    # by the sign of the means (+0.1, 0, −0.5) this was "weak_negative"
    assert summary["effect_per_lam"] == {
        "0.25": "within_noise",
        "0.5": "within_noise",
        "1": "within_noise",
    }
    assert summary["regime"] == "neutral"


def test_sweep_regime_with_one_seed_is_by_the_test_set_se():
    one = sweep_rows()[lambda t: t["seed"] == 0]
    summary = sweep_summary(one.assign(tg=[0, 0, 0, 0], tg_se=0.0, tg_se_kind="paired"))
    assert summary["regime"] == "neutral"  # was strong_negative: max TG ≤ 0
    assert summary["regime_basis"] == "1 seed (TG beyond 2 test-set SE (paired))"
    # −0.05 (one test image of 2,000) with its SE 0.05: within noise, not strong negative
    summary = sweep_summary(one.assign(tg=[0, -0.05, -0.05, -0.05], tg_se=0.05))
    assert summary["regime"] == "neutral"
    assert summary["per_lam"]["0.5"]["tg_se"] == pytest.approx(0.05)
    assert sweep_summary(one.assign(tg=[0, -0.2, 0.0, 0.0], tg_se=0.05))["regime"] == (
        "strong_negative"
    )


def test_pairwise_cells_are_every_ordered_pair():
    cells = pairwise_cells(["a", "b", "c"], ["ew", "forkmerge"], [0, 1])
    assert len(cells) == 3 * 2 * 2 * 2
    assert all(c.target != c.aux for c in cells)
    assert len({c.key() for c in cells}) == len(cells)


def test_pairwise_input_checks():
    with pytest.raises(NtlabError, match="not a domain"):
        check_domains(["mnist", "nosuch"], ["mnist", "syn"])
    with pytest.raises(NtlabError, match="at least two"):
        check_domains(["mnist", "mnist"], ["mnist", "syn"])
    with pytest.raises(NtlabError, match="unknown pairwise method"):
        check_methods(["ew", "pcgrad"])


def test_pairwise_summary_counts_and_regimes():
    rows = []
    tgs = {("a", "b"): [1.5, 1.0], ("a", "c"): [0.5, 0.3], ("b", "a"): [-2.0, -1.0]}
    tgs |= {("b", "c"): [0.5, 0.4], ("c", "a"): [-0.2, -0.4], ("c", "b"): [-0.1, 0.0]}
    for (t, a), values in tgs.items():
        for seed, tg in enumerate(values):
            rows.append({"target": t, "aux": a, "method": "ew", "seed": seed, "tg": tg})
    table = pd.DataFrame(rows)
    s = pairwise_summary(table)["methods"]["ew"]
    assert s["cells"] == 6 and s["negative_cells"] == 3 and s["cells_below_minus_1"] == 1
    assert s["regime_per_target"] == {
        "a": "positive",
        "b": "weak_negative",
        "c": "strong_negative",
    }
    # c ← b (−0.05 ± 0.07) is within noise: c is strongly negative through c ← a alone
    assert s["cells_tg"]["c<-b"]["effect"] == "within_noise"
    assert s["cells_tg"]["b<-c"]["effect"] == "helps"
    assert s["positive_on_every_seed_ge_1"] == ["a<-b"]
    assert s["mean_tg"] == pytest.approx(sum(sum(v) / 2 for v in tgs.values()) / 6)
    matrix = tg_matrix(table, "ew")
    assert list(matrix.index) == ["a", "b", "c"] and list(matrix.columns) == ["a", "b", "c"]
    assert matrix.loc["b", "a"] == pytest.approx(-1.5) and pd.isna(matrix.loc["a", "a"])


def test_pairwise_forkmerge_row_at_exactly_zero_is_neutral():
    """ForkMerge returning STL exactly (TG = 0 on every cell and seed) is not negative."""
    rows = [
        {"target": t, "aux": a, "method": m, "seed": seed, "tg": tg}
        for seed in (0, 1, 2)
        for t, a, m, tg in [
            ("a", "b", "ew", -5.4 - 0.1 * seed),
            ("a", "b", "forkmerge", 0.0),
            ("a", "c", "forkmerge", 0.0),
        ]
    ]
    s = pairwise_summary(pd.DataFrame(rows))
    assert s["methods"]["forkmerge"]["regime_per_target"] == {"a": "neutral"}
    assert s["methods"]["ew"]["regime_per_target"] == {"a": "strong_negative"}
    assert s["regime_basis"] == "3 seeds (mean beyond 2 seed std)"


def test_forkmerge_results_are_cached(tiny_digits):
    # A budget no other test uses: the cache is shared by the whole test session.
    cfg = TrainConfig(
        target="optdigits", method="ew", aux=["mnist"], steps=9, batch_size=16, device="cpu"
    )
    fm = ForkMergeOptions(merge_every=3)
    first, source = cached_forkmerge(cfg, joint_branches("optdigits", ["mnist"]), fm)
    again, source2 = cached_forkmerge(cfg, joint_branches("optdigits", ["mnist"]), fm)
    assert (source, source2) == ("run", "cache") and first == again
    other, source3 = cached_forkmerge(
        cfg, joint_branches("optdigits", ["mnist"]), ForkMergeOptions(merge_every=9)
    )
    assert source3 == "run"  # a changed ForkMerge option is another run


def test_ternary_table_weights_corners_and_stl(tiny_digits):
    cfg = TrainConfig(
        target="optdigits", method="ew", aux=["mnist", "syn"], steps=6, batch_size=16, device="cpu"
    )
    tgt = LossTerm("optdigits", ("optdigits",), 1.0)
    specs = [BranchSpec((tgt,))] + [
        BranchSpec((tgt, LossTerm(a, (a,), 1.0))) for a in ("mnist", "syn")
    ]
    stl, _ = cached_run(stl_config(cfg))
    table, own = ternary_table(cfg, specs, 4, stl)
    assert len(table) == 15  # (R+1)(R+2)/2
    assert ((table["w0"] + table["w1"] + table["w2"]) - 1).abs().max() < 1e-9
    corner = table[table["w0"] == 1.0].iloc[0]
    assert corner["val_score"] == pytest.approx(own[0]["val_score"])
    assert corner["test_score"] == pytest.approx(own[0]["test_score"])
    # The target-alone branch is the STL run: same start, same batches, same steps.
    assert own[0]["test_score"] == pytest.approx(stl["test_score"])
    assert corner["tg"] == pytest.approx(0.0)
    assert table["best"].sum() == 1
    assert table.loc[table["best"], "val_score"].item() == table["val_score"].max()
    # Every merge's TG has its paired test-set SE against the STL run, and a verdict by it.
    assert set(table["tg_se_kind"]) == {"paired"} and (table["tg_se"] >= 0).all()
    assert corner["tg_se"] == 0.0 and corner["effect"] == "within_noise"  # identical to STL
    beyond = table["tg"].abs() > 2 * table["tg_se"]
    assert (table.loc[~beyond, "effect"] == "within_noise").all()
    assert set(table.loc[beyond & (table["tg"] > 0), "effect"]) <= {"helps"}
    assert set(table.loc[beyond & (table["tg"] < 0), "effect"]) <= {"hurts"}
    summary = ternary_summary(table, own)
    assert summary["corners"]["optdigits=1"]["tg"] == pytest.approx(0.0)
    assert summary["corners"]["optdigits=1"]["effect"] == "within_noise"
    assert summary["within_noise_points"] == int((~beyond).sum())
    for point in ("best", "centre", "best_test_point"):
        assert {"tg", "tg_se", "tg_se_kind", "effect"} <= set(summary[point]), point
    # without the STL's per-image correctness the SE falls back to the binomial one
    unpaired, _ = ternary_table(cfg, specs, 1, {"test_score": stl["test_score"]})
    assert set(unpaired["tg_se_kind"]) == {"binomial"} and (unpaired["tg_se"] > 0).all()
    assert sum(summary["best"]["weights"]) == pytest.approx(1.0)
    with pytest.raises(NtlabError, match="--resolution"):
        check_resolution(0)
    # dare with p = 0 is the average exactly; ties merges the deltas from the common start,
    # and its corners are still the branches as trained
    from ntlab.core.merge import MergeOp

    same, _ = ternary_table(cfg, specs, 4, stl, op=MergeOp("dare", p=0.0))
    assert same["test_score"].tolist() == table["test_score"].tolist()
    ties, ties_own = ternary_table(cfg, specs, 4, stl, op=MergeOp("ties", k=0.1))
    assert ties_own == own
    inner = (ties[["w0", "w1", "w2"]] < 1).all(axis=1)
    corners = ties[~inner].sort_values(["w0", "w1"]).reset_index(drop=True)
    plain = table[~inner].sort_values(["w0", "w1"]).reset_index(drop=True)
    assert corners["test_score"].tolist() == plain["test_score"].tolist()
    assert ties.loc[inner, "val_score"].tolist() != table.loc[inner, "val_score"].tolist()
