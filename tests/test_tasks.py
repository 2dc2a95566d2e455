"""The task layer: directions, TG in the primary metric, fold SEs, mixed dense batches."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ntlab.data.benchmark import SPLITS, TaskData
from ntlab.data.sampler import BatchSource
from ntlab.errors import NtlabError
from ntlab.metrics import delta_m_of, fold_se, gain, tg_noise, transfer_gain
from ntlab.models.multitask import MultiTaskModel
from ntlab.tasks import (
    FOLDS,
    FoldedEvaluator,
    TaskSpec,
    classification_task,
    depth_task,
    fold_ids,
    normal_task,
    segmentation_task,
)


def test_tg_is_positive_when_the_method_is_better_whatever_the_direction():
    assert transfer_gain(80.0, 75.0) == 5.0
    assert transfer_gain(0.30, 0.35, higher_is_better=False) == pytest.approx(0.05)
    err = {"test_score": 0.30, "val_score": 0.2, "higher_is_better": False}
    stl = {"test_score": 0.35, "val_score": 0.1, "higher_is_better": False}
    assert gain(err, stl) == pytest.approx(0.05)
    assert gain(err, stl, "val") == pytest.approx(-0.1)
    assert gain({"test_score": 1.0}, {"test_score": 0.5}) == 0.5  # old results: accuracies


def test_folds_are_disjoint_balanced_and_the_same_for_every_model():
    ids = fold_ids(103)
    counts = torch.bincount(ids, minlength=FOLDS)
    assert counts.sum() == 103 and counts.max() - counts.min() <= 1
    assert torch.equal(ids, fold_ids(103))
    assert not torch.equal(ids, torch.arange(103) % FOLDS)  # shuffled, not striped


def test_fold_se_is_the_sd_of_the_paired_fold_differences_over_root_g():
    a = [10.0, 12.0, 11.0, 9.0]
    b = [9.0, 11.5, 11.0, 8.0]
    d = [1.0, 0.5, 0.0, 1.0]
    assert fold_se(a, b) == pytest.approx(statistics.stdev(d) / 2)
    noise = tg_noise(
        {"test_score": 11.0, "test_folds": a, "metric": "miou"},
        {"test_score": 10.0, "test_folds": b, "metric": "miou"},
    )
    assert noise["tg_se_kind"] == "folds" and noise["tg_se"] == pytest.approx(fold_se(a, b))
    # without folds, a metric other than accuracy has no binomial fallback: no SE at all
    bare = tg_noise({"test_score": 1.0, "metric": "miou", "test_n": 50}, {"test_score": 0.5})
    assert bare["tg_se"] is None


def test_folded_evaluation_of_a_mean_metric_matches_a_hand_computation():
    spec = depth_task()
    n = 40
    g = torch.Generator().manual_seed(0)
    target = torch.rand(n, 1, 4, 4, generator=g) + 1
    pred = target + torch.randn(n, 1, 4, 4, generator=g) * 0.1
    meter = FoldedEvaluator(spec, n, "cpu")
    for lo in range(0, n, 7):  # chunks that do not line up with the folds
        meter.update(pred[lo : lo + 7], target[lo : lo + 7])
    values, folds = meter.compute()
    assert values["abs_err"] == pytest.approx((pred - target).abs().mean().item(), rel=1e-6)
    ids = fold_ids(n)
    for f in range(FOLDS):
        keep = ids == f
        expected = (pred[keep] - target[keep]).abs().mean().item()
        assert folds[f] == pytest.approx(expected, rel=1e-6)


def test_delta_m_averages_the_targets_metrics_in_their_directions():
    over = {"miou": True, "pixel_acc": True}
    method = {"target_metrics": {"test": {"miou": 55.0, "pixel_acc": 90.0}}, "test_score": 55.0}
    stl = {
        "target_metrics": {"test": {"miou": 50.0, "pixel_acc": 90.0}},
        "delta_m_over": over,
        "test_score": 50.0,
    }
    assert delta_m_of(method, stl) == pytest.approx(100 * (0.1 + 0.0) / 2)
    lower = {"abs_err": False, "rel_err": False}
    method = {"target_metrics": {"test": {"abs_err": 0.9, "rel_err": 0.2}}}
    stl = {"target_metrics": {"test": {"abs_err": 1.0, "rel_err": 0.2}}, "delta_m_over": lower}
    assert delta_m_of(method, stl) == pytest.approx(100 * 0.1 / 2)  # a lower error: Δm > 0
    # a row without per-metric values: the primary's relative change in its direction
    lower_row = {"test_score": 0.9, "higher_is_better": False}
    lower_stl = {"test_score": 1.0, "higher_is_better": False}
    assert delta_m_of(lower_row, lower_stl) == pytest.approx(10.0)


def test_a_spec_rejects_a_primary_that_is_not_one_of_its_metrics():
    with pytest.raises(NtlabError, match="primary metric 'x'"):
        TaskSpec("custom", None, F.mse_loss, {"mse": False}, "x")


class MapBackbone(nn.Module):
    """A tiny fully-convolutional backbone with a dense head factory."""

    out_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)

    @staticmethod
    def dense_head(c_in, c_out, size):
        return nn.Conv2d(c_in, c_out, 1)


def _dense_data(n=12, size=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    seg = torch.randint(0, 3, (n, size, size), generator=g)
    depth = torch.rand(n, 1, size, size, generator=g) + 0.5
    normal = F.normalize(torch.randn(n, 3, size, size, generator=g), dim=1)
    specs = {"segment": segmentation_task(3), "depth": depth_task(), "normal": normal_task()}
    targets = {"segment": seg, "depth": depth, "normal": normal}
    return {
        name: TaskData(name, spec.num_classes, {s: (x, targets[name]) for s in SPLITS}, spec)
        for name, spec in specs.items()
    }


def test_a_mixed_batch_of_dense_tasks_weighs_every_sample_the_same():
    data = _dense_data()
    torch.manual_seed(0)
    model = MultiTaskModel(MapBackbone(), {k: v.spec for k, v in data.items()}, (3, 6, 6))
    src = BatchSource([data["depth"], data["normal"]], [1, 2], 10, torch.Generator().manual_seed(0))
    x, ys, heads = src.next()
    assert isinstance(ys, tuple) and len(ys) == 2 and len(x) == 10
    assert torch.equal(heads, heads.sort().values)  # ordered task by task
    n_depth = int((heads == 1).sum())
    assert len(ys[0]) == n_depth and len(ys[1]) == 10 - n_depth
    features = model.features(x.float())
    loss = model.routed_loss(features, ys, heads, [1, 2])
    f_d, f_n = features[:n_depth], features[n_depth:]
    expected = (
        data["depth"].spec.loss(model.heads[1](f_d), ys[0]) * n_depth
        + data["normal"].spec.loss(model.heads[2](f_n), ys[1]) * (10 - n_depth)
    ) / 10
    assert torch.allclose(loss, expected)
    loss.backward()
    assert model.backbone.conv.weight.grad.abs().sum() > 0


def test_a_dense_task_on_a_vector_backbone_is_refused_with_the_fix():
    from ntlab.models import BACKBONES

    with pytest.raises(NtlabError, match="fully-convolutional backbone"):
        MultiTaskModel(BACKBONES.get("cnn")(image_size=16), {"d": depth_task()}, (3, 16, 16))


def test_classification_heads_are_built_as_before():
    torch.manual_seed(0)
    a = MultiTaskModel(Flat(), {"t": 10})
    torch.manual_seed(0)
    b = MultiTaskModel(Flat(), {"t": classification_task(10)})
    assert torch.equal(a.heads[0].weight.detach(), b.heads[0].weight.detach())


class Flat(nn.Flatten):
    out_features = 8


def test_delta_m_leaves_out_a_metric_whose_baseline_is_zero():
    over = {"mean_angle": False, "within_11.25": True}
    method = {"target_metrics": {"test": {"mean_angle": 40.0, "within_11.25": 2.0}}}
    stl = {
        "target_metrics": {"test": {"mean_angle": 50.0, "within_11.25": 0.0}},
        "delta_m_over": over,
    }
    assert delta_m_of(method, stl) == pytest.approx(20.0)  # the angle alone: 10/50 lower
    assert math.isnan(delta_m_of({"test_score": 1.0}, {"test_score": 0.0}))


def test_the_built_in_tasks_and_the_reports_share_one_table_of_directions():
    from ntlab.ctr import ctcvr_task, ctr_task
    from ntlab.dense_metrics import HIGHER_IS_BETTER
    from ntlab.metrics import METRIC_DIRECTIONS
    from ntlab.tasks import classification_task, depth_task, normal_task, segmentation_task

    specs = [classification_task(10), classification_task(10, "error")]
    specs += [segmentation_task(11), depth_task(), normal_task(), ctr_task(), ctcvr_task()]
    for spec in specs:
        assert spec.metrics == {m: METRIC_DIRECTIONS[m] for m in spec.metrics}
    classification = {"acc", "error", "loss", "confidence", "csd"}
    recommendation = {"auc", "logloss", "ctr_auc"}
    assert set(HIGHER_IS_BETTER) | classification | recommendation == set(METRIC_DIRECTIONS)
    lower = {m for m, up in METRIC_DIRECTIONS.items() if not up}
    assert lower == {
        "error", "loss", "csd", "abs_err", "rel_err", "mean_angle", "median_angle", "logloss",
    }  # fmt: skip
