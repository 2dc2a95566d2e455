"""CSD vs TG over λ: trainings through the cache, TG against λ = 0, the regime."""

import pandas as pd
import pytest

from ntlab.analysis.csd import csd_summary, csd_table, fixed_config
from ntlab.analysis.sweep import lam_stats
from ntlab.core.runner import TrainConfig, cached_results

BASE = TrainConfig(
    target="optdigits", aux=["mnist", "syn"], steps=10, batch_size=16, eval_every=5, device="cpu"
)


def test_lambda_zero_is_the_stl_training():
    assert fixed_config(BASE, 0.0, 1).method == "stl"
    cfg = fixed_config(BASE, 0.5, 1)
    assert (cfg.method, cfg.lam, cfg.seed) == ("fixed", 0.5, 1)


def test_csd_table_rows_reference_and_cache(tiny_digits):
    table = csd_table(BASE, [0.0, 0.5, 1.0], [0, 1])
    assert len(table) == 6
    assert table["csd"].between(0, 1).all()
    assert (table[table["lam"] == 0]["tg"] == 0).all()
    for _, row in table.iterrows():
        stl = table[(table["lam"] == 0) & (table["seed"] == row["seed"])]["test_score"].item()
        assert row["tg"] == pytest.approx(row["test_score"] - stl)
    # Each training was kept: the same table again comes entirely from the cache.
    again = csd_table(BASE, [0.0, 0.5, 1.0], [0, 1])
    assert (again["source"] == "cache").all()
    assert again.drop(columns="source").equals(table.drop(columns="source"))
    assert cached_results(fixed_config(BASE, 0.5, 1)) is not None


def test_summary_mean_std_and_regime():
    table = pd.DataFrame(
        {
            "lam": [0.0, 0.0, 0.5, 0.5, 1.0, 1.0],
            "seed": [0, 1, 0, 1, 0, 1],
            "csd": [0.1, 0.1, 0.2, 0.3, 0.4, 0.4],
            "tg": [0.0, 0.0, 1.0, 2.0, -1.0, -1.5],
        }
    )
    stats = lam_stats(table, ["tg"])
    assert stats.loc[0.5, "tg_mean"] == pytest.approx(1.5)
    assert stats.loc[1.0, "tg_std"] == pytest.approx(0.5 / 2**0.5)
    summary = csd_summary(table)
    # +1.5 ± 0.71 helps and −1.25 ± 0.35 hurts, each beyond twice its seed std
    assert summary["regime"] == "weak_negative"
    assert summary["effect_per_lam"] == {"0.5": "helps", "1": "hurts"}
    assert summary["regime_basis"] == "2 seeds (mean beyond 2 seed std)"
    # with seed 1 of λ = 1 at −3.0 instead, −2 ± 1.41 is within noise: positive, not weak
    noisy = table.assign(tg=[0.0, 0.0, 1.0, 2.0, -1.0, -3.0])
    assert csd_summary(noisy)["regime"] == "positive"
    assert summary["best_lam"] == 0.5
    assert summary["best_tg"] == pytest.approx(1.5)
    assert summary["seeds"] == [0, 1]
