"""The t-SNE table: sources, the interpolated share, classes kept."""

import pytest
import torch

from ntlab.analysis.tsne import top_classes, tsne_summary, tsne_table
from ntlab.core.runner import TrainConfig, trained_model
from ntlab.errors import NtlabError


def test_top_classes_keeps_the_most_frequent_with_ties_to_the_smaller_label():
    labels = torch.tensor([3, 3, 3, 1, 1, 2, 2, 0])
    assert top_classes(labels, 2, 4).tolist() == [1, 3]
    assert top_classes(labels, 4, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(NtlabError, match="--classes"):
        top_classes(labels, 5, 4)


def test_tsne_table_panels(tiny_digits):
    cfg = TrainConfig(target="optdigits", steps=10, batch_size=16, device="cpu")
    model, data, _, _ = trained_model(cfg, tasks=["mnist", "syn"])
    table = tsne_table(
        model, data, "optdigits", ["mnist", "syn"], [0.0, 1.0], classes=4, max_points=90, seed=0
    )
    assert set(table["lam"]) == {0.0, 1.0}
    assert set(table["source"]) == {"target-train", "aux-train", "target-test"}
    task = data["optdigits"]
    keep = top_classes(torch.cat([task.y("train"), task.y("test")]), 4, 10).tolist()
    assert set(table["label"]) == set(keep)
    assert table["label"].nunique() <= 4
    zero = table[table["lam"] == 0.0]
    assert "aux-train" not in set(zero["source"])
    # Each point names its domain: the target, or the auxiliary domain it was drawn from.
    target_rows = table[table["source"] != "aux-train"]
    assert set(target_rows["domain"]) == {"optdigits"}
    aux_rows = table[table["source"] == "aux-train"]
    assert set(aux_rows["domain"]) == {"mnist", "syn"}
    # Every panel shows the same target test points at the same place.
    tests = [
        g[g["source"] == "target-test"][["x", "y"]].to_numpy() for _, g in table.groupby("lam")
    ]
    assert (tests[0] == tests[1]).all()
    # No training point appears twice in a panel.
    for _, panel in table.groupby("lam"):
        train = panel[panel["source"] != "target-test"]
        assert not train.duplicated(["x", "y"]).any()
    summary = tsne_summary(table)
    assert summary["per_lam"]["0"]["aux_share"] == 0.0
    assert summary["per_lam"]["1"]["expected_aux_share"] == 0.5
