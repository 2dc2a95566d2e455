"""The multi-market benchmarks' parts: MTReclib's AliExpress CSV format (a tiny tree in the
exact layout), the time split and encoding, the CTR/ESMM tasks' losses and AUC, the tabular
backbones, and the generated `markets`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ntlab.ctr import auc_points, ctcvr_loss, ctcvr_task, ctr_task, log_ctcvr
from ntlab.data import aliexpress as ax
from ntlab.data.markets import MarketsConfig, generate_market, prepare_markets
from ntlab.errors import NtlabError
from ntlab.models import BACKBONES, MultiTaskModel
from ntlab.tasks import fold_ids

ROWS = 800  # a country: 720 / 40 / 40 rows, two of val and of test in each of 20 folds


def country_frame(rows: int, seed: int) -> pd.DataFrame:
    """One country's rows in MTReclib's columns: a learnable click (categorical_1 and
    numerical_1), and in val and test each fold holds a converted click and a non-click."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 6, (rows, 16)) * 3 + 100
    num = rng.normal(0, 1, (rows, 63)).round(3)
    logit = (cat[:, 0] - 107.5) / 3 + num[:, 0]
    click = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    conversion = click * (rng.random(rows) < 0.5)
    sizes = ax.split_sizes(rows)
    for lo, n in ((sizes["train"], sizes["val"]), (sizes["train"] + sizes["val"], sizes["test"])):
        ids = fold_ids(n).numpy()
        order = np.argsort(ids, kind="stable")
        rank = np.empty(n, int)
        rank[order] = np.arange(n) - np.searchsorted(ids[order], ids[order])
        click[lo : lo + n] = (rank % 2 == 0).astype(int)
        conversion[lo : lo + n] = click[lo : lo + n]
    frame = pd.DataFrame({"search_id": np.arange(rows)})
    frame[list(ax.CATEGORICAL)] = cat
    frame[list(ax.NUMERICAL)] = num
    frame["click"], frame["conversion"] = click, conversion
    return frame


def write_tree(root, rows: int = ROWS):
    """ROOT/AliExpress_<CC>/{train,test}.csv, train.csv with the first 3/4 of the rows."""
    for i, cc in enumerate(ax.COUNTRIES):
        frame = country_frame(rows, i)
        folder = ax.folder(root, cc)
        folder.mkdir(parents=True, exist_ok=True)
        cut = rows * 3 // 4
        frame.iloc[:cut].to_csv(folder / "train.csv", index=False)
        frame.iloc[cut:].to_csv(folder / "test.csv", index=False)
    return root


def test_the_tree_is_split_90_5_5_in_file_order_with_shared_train_vocabularies(tmp_path):
    root = write_tree(tmp_path / "ax")
    # a value seen only after the training rows gets the reserved index 0
    path = ax.folder(root, "US") / "test.csv"
    frame = pd.read_csv(path)
    frame.loc[len(frame) - 1, "categorical_2"] = 999_999
    frame.to_csv(path, index=False)
    data = ax.load_market_tree(root)
    assert {s: len(data.y["NL"][s]) for s in ax.SPLITS} == {"train": 720, "val": 40, "test": 40}
    # train is the first 720 rows (train.csv's 600, then test.csv's first 120)
    nl = pd.concat(pd.read_csv(ax.folder(root, "NL") / f) for f in ax.FILES)
    assert torch.equal(data.y["NL"]["train"][:, 0], torch.tensor(nl["click"].values[:720]).float())
    assert data.vocab == [7] * 16  # six values per field, seen in training, and the reserved 0
    x = data.x["US"]["test"]
    assert x.dtype == torch.float32 and x.shape == (40, 79) and x[-1, 1] == 0
    assert set(data.x["NL"]["train"][:, 0].tolist()) == set(range(1, 7))
    train = torch.cat([data.x[cc]["train"][:, 16:] for cc in ax.COUNTRIES])
    assert train.mean(0).abs().max() < 1e-4 and (train.std(0) - 1).abs().max() < 1e-3
    again = ax.load_market_tree(root)  # from the parse cache
    assert torch.equal(again.x["ES"]["val"], data.x["ES"]["val"]) and again.vocab == data.vocab


def test_the_parse_cache_is_read_only_by_the_loader_that_wrote_it(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "ax")
    reads = []
    real = ax.read_market_file
    monkeypatch.setattr(ax, "read_market_file", lambda p: reads.append(p) or real(p))
    ax.load_market_tree(root)
    ax.load_market_tree(root)
    assert len(reads) == 8  # parsed once, then from the cache
    monkeypatch.setattr(ax, "_code_digest", lambda: "another loader")
    ax.load_market_tree(root)
    assert len(reads) == 16  # a changed loader parses again


def test_a_fold_without_conversions_is_refused_at_load_time(tmp_path):
    root = write_tree(tmp_path / "ax")
    data = ax.load_market_tree(root)
    ax.check_folds(root, data, "US", ("click", "conversion"))
    data.y["US"]["test"][:, 1] = 0
    with pytest.raises(NtlabError, match="AliExpress_US: the test split .* conversion AUC"):
        ax.check_folds(root, data, "US", ("click", "conversion"))
    ax.check_folds(root, data, "US", ("click",))  # the CTR task does not need conversions


def test_auc_reference_values_with_ties():
    # positives 0.35, 0.8, 0.4 against negatives 0.1, 0.4: pairs won 1, 0, 1, 1, 1, and the
    # tie 0.4 = 0.4 counts one half: 4.5 / 6
    score = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    label = torch.tensor([0.0, 0, 1, 1, 1])
    assert auc_points(score, label) == pytest.approx(75.0)
    assert auc_points(torch.zeros(4), torch.tensor([0.0, 1, 0, 1])) == pytest.approx(50.0)
    with pytest.raises(NtlabError, match="no positives"):
        auc_points(torch.rand(3), torch.zeros(3))


def test_esmm_ctcvr_is_the_product_of_the_towers_and_stable_in_log_space():
    logits = torch.tensor([[0.3, -1.2], [4.0, 2.0], [-60.0, 3.0], [80.0, 90.0], [-70.0, -90.0]])
    log_p, log_q = log_ctcvr(logits)
    p = torch.sigmoid(logits[:, 0].double()) * torch.sigmoid(logits[:, 1].double())
    assert torch.allclose(log_p.double().exp(), p, rtol=1e-5, atol=0)
    assert torch.allclose(log_q.double().exp(), 1 - p, rtol=1e-5, atol=1e-30)
    target = torch.tensor([[1.0, 1], [1, 0], [0, 0], [1, 1], [0, 0]])
    loss = ctcvr_loss(logits, target)
    assert torch.isfinite(loss)
    moderate = logits[:2].double()
    naive = torch.nn.functional.binary_cross_entropy(
        torch.sigmoid(moderate[:, 0]), target[:2, 0].double()
    ) + torch.nn.functional.binary_cross_entropy(p[:2], target[:2, 1].double())
    assert ctcvr_loss(moderate, target[:2].double()).item() == pytest.approx(naive.item())
    # extreme logits: conversion 0 with pCTCVR → 1 gives a large, finite loss and gradient
    wild = torch.tensor([[80.0, 90.0]], requires_grad=True)
    bad = ctcvr_loss(wild, torch.tensor([[1.0, 0.0]]))
    bad.backward()
    assert torch.isfinite(bad) and bad > 10 and torch.isfinite(wild.grad).all()


@pytest.mark.parametrize("backbone", ["esmm", "mmoe"])
def test_tabular_backbones_build_one_tower_per_output(backbone):
    inputs = {"categorical": [5] * 16, "numerical": 63}
    model = BACKBONES.get(backbone)(width=4, inputs=inputs, input_shape=(79,))
    net = MultiTaskModel(model, {"us_ctr": ctr_task(), "us_ctcvr": ctcvr_task()}, (79,))
    x = torch.cat([torch.randint(0, 5, (6, 16)).float(), torch.randn(6, 63)], 1)
    features = net.features(x)
    assert features.shape == (6, model.out_features)
    assert net.logits(features, 0).shape == (6, 1) and net.logits(features, 1).shape == (6, 2)
    assert model.embedding.out_features == 17 * 4


def test_tabular_backbones_refuse_images():
    with pytest.raises(NtlabError, match="tabular recommendation data"):
        BACKBONES.get("esmm")(width=4, inputs=None, input_shape=(3, 16, 16))


def test_the_generator_is_deterministic_and_the_countries_differ():
    cfg = MarketsConfig(seed=3, rows=500)
    a, b = generate_market(cfg, "US"), generate_market(cfg, "US")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    other = generate_market(cfg, "FR")
    assert not np.array_equal(a["click"], other["click"])
    assert (a["conversion"] <= a["click"]).all() and 0.1 < a["click"].mean() < 0.6
    assert not np.array_equal(
        generate_market(MarketsConfig(seed=4, rows=500), "US")["click"], a["click"]
    )


def test_prepare_markets_writes_mtreclib_csvs_reproducibly(ntlab_home):
    cfg = MarketsConfig(seed=1, rows=400)
    root = prepare_markets(cfg, force=True)
    first = (root / "manifest.json").read_text()
    header = (ax.folder(root, "NL") / "train.csv").open().readline().strip().split(",")
    assert header == list(ax.COLUMNS)
    cat, num, labels = ax.read_market_file(ax.folder(root, "ES") / "test.csv")
    assert cat.shape == (80, 16) and num.shape == (80, 63) and labels.shape == (80, 2)
    again = prepare_markets(cfg, force=True)
    import json

    assert (
        json.loads((again / "manifest.json").read_text())["fingerprint"]
        == (json.loads(first)["fingerprint"])
    )


def test_the_recommendation_losses_are_part_of_the_code_digest(tmp_path):
    """ntlab/ctr.py decides trained numbers: an edit retires the cached trainings."""
    import shutil
    from pathlib import Path

    from ntlab.core import cache

    package = Path(cache.__file__).resolve().parents[1]
    copy = tmp_path / "ntlab"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = cache.source_digest(copy)
    path = copy / "ctr.py"
    path.write_text(path.read_text().replace("return ctr + _bce_log", "return 2 * ctr + _bce_log"))
    assert cache.source_digest(copy) != before
