"""The `ssl` benchmark's pieces: the split, the rotations, the exemplar copies and InfoNCE,
the tasks with views in the training core, and WRN-28-2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntlab.core.train import LossTerm, attach_sources, term_losses
from ntlab.data.benchmark import TaskData
from ntlab.data.files import to_float
from ntlab.data.sampler import BatchSource, seeded_generator
from ntlab.data.ssl import (
    augmented_views,
    exemplar_task,
    info_nce,
    partner_top1,
    rotations,
    split_indices,
)
from ntlab.errors import NtlabError
from ntlab.models import BACKBONES
from ntlab.models.multitask import MultiTaskModel
from ntlab.tasks import classification_task, flat_views


def test_split_is_fixed_disjoint_and_class_balanced():
    labels = np.arange(2000) % 10
    a, b = split_indices(labels, 95, val=300), split_indices(labels, 95, val=300)
    for key in a:
        assert np.array_equal(a[key], b[key])
    val, lab, unl = (set(a[k].tolist()) for k in ("val", "labelled", "unlabelled"))
    assert len(val) == 300 and not val & lab and not val & unl
    assert lab <= unl and len(unl) == 1700
    counts = np.bincount(labels[a["labelled"]], minlength=10)
    assert counts.tolist() == [10] * 5 + [9] * 5  # 95 = 9 each + one more for classes 0-4


def test_split_refuses_what_the_files_cannot_give():
    with pytest.raises(NtlabError, match="need 2100 training images"):
        split_indices(np.arange(2000) % 10, 1800, val=300)
    with pytest.raises(NtlabError, match="class 9"):
        split_indices(np.r_[np.arange(900) % 9, [9, 9]], 100, val=10)


def test_rotations_turn_each_image_four_ways_counter_clockwise():
    x = torch.arange(2 * 9, dtype=torch.uint8).view(2, 1, 3, 3)
    turned, k = rotations(x)
    assert turned.shape == (8, 1, 3, 3) and k.tolist() == [0, 1, 2, 3] * 2
    assert torch.equal(turned[0], x[0]) and torch.equal(turned[4], x[1])
    # 90° counter-clockwise: the top row becomes the left column, read bottom to top
    assert turned[1, 0, :, 0].tolist() == x[0, 0, 0].tolist()[::-1]
    assert torch.equal(turned[2], x[0].flip(-1).flip(-2))


def test_exemplar_copies_are_seeded_and_differ():
    x = (torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 255).byte()
    a, b = augmented_views(x, 2, True, 5), augmented_views(x, 2, True, 5)
    assert a.shape == (10, 2, 1, 28, 28) and a.dtype == torch.uint8 and torch.equal(a, b)
    assert not torch.equal(a[:, 0], a[:, 1])
    assert not torch.equal(a, augmented_views(x, 2, True, 6))


def _info_nce_by_hand(z: torch.Tensor, tau: float) -> float:
    """The NT-Xent definition, copy by copy (z: [B, V, D])."""
    b, v, _ = z.shape
    flat = F.normalize(z, dim=-1).reshape(b * v, -1)
    total = 0.0
    for i in range(b * v):
        others = [j for j in range(b * v) if j != i]
        pos = [j for j in others if j // v == i // v]
        e = {j: math.exp(float(flat[i] @ flat[j]) / tau) for j in others}
        total += -math.log(sum(e[j] for j in pos) / sum(e.values()))
    return total / (b * v)


def test_info_nce_matches_its_definition_in_either_layout():
    z = torch.randn(5, 2, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = _info_nce_by_hand(z, 0.5)
    assert info_nce(z, torch.arange(5)).item() == pytest.approx(want, rel=1e-5)
    assert info_nce(z.reshape(10, 7), torch.arange(5)).item() == pytest.approx(want, rel=1e-5)
    # three copies a sample: two positives each
    z3 = torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert info_nce(z3, torch.arange(3)).item() == pytest.approx(
        _info_nce_by_hand(z3, 0.5), rel=1e-5
    )


def test_partner_top1_counts_copies_that_find_their_partner():
    z = torch.eye(4)[:, None].repeat(1, 2, 1)  # each sample's two copies identical
    assert partner_top1(z, torch.arange(4)) == 100.0
    z[0, 1], z[1, 1] = z[1, 0].clone(), z[0, 0].clone()  # each finds the other's copy
    assert partner_top1(z, torch.arange(4)) == pytest.approx(100 * 4 / 8)


def _views_data(n: int = 12) -> dict[str, TaskData]:
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(n, 1, 12, 12, generator=g) * 255).byte()
    x_rot, y_rot = rotations(img)
    ex = augmented_views(img, 2, False, 0)
    spec = exemplar_task()
    return {
        "rotation": TaskData("rotation", 4, {"train": (x_rot, y_rot)}),
        "exemplar": TaskData("exemplar", None, {"train": (ex, torch.arange(n))}, spec),
    }


def test_a_mixture_of_tasks_with_and_without_views_is_each_task_s_loss_by_its_samples():
    data = _views_data()
    torch.manual_seed(0)
    backbone = BACKBONES.get("cnn")(image_size=12, width=8, input_shape=(1, 12, 12))
    model = MultiTaskModel(backbone, {t: d.spec for t, d in data.items()}, (1, 12, 12))
    src = BatchSource([data["rotation"], data["exemplar"]], [0, 1], 16, seeded_generator(0, "mix"))
    x, ys, heads = src.next()
    assert isinstance(x, tuple) and x[1].dim() == 5  # task by task, the views kept
    (mixed,), _ = term_losses(model, [(x, ys, heads)], [[0, 1]])
    n_rot = int((heads == 0).sum())
    rot = F.cross_entropy(model.logits(model.features(to_float(x[0])), 0), ys[0])
    ex = info_nce(model.logits(model.features(flat_views(to_float(x[1]), 2)), 1), ys[1])
    want = (rot * n_rot + ex * (16 - n_rot)) / 16
    assert mixed.item() == pytest.approx(want.item(), rel=1e-5)


def test_ew_over_tasks_with_views_trains_through_the_core():
    from ntlab.core.state import OptimConfig, TrainState
    from ntlab.core.train import train

    data = _views_data()
    data["labels"] = TaskData(
        "labels", 10, {"train": (data["rotation"].x("train")[:12], torch.arange(12) % 10)}
    )
    torch.manual_seed(0)
    backbone = BACKBONES.get("cnn")(image_size=12, width=8, input_shape=(1, 12, 12))
    specs = {"labels": classification_task(10, "error"), **{t: data[t].spec for t in data}}
    model = MultiTaskModel(backbone, {t: specs[t] for t in ("labels", "rotation", "exemplar")})
    state = TrainState.create(model, OptimConfig("adam", 1e-3), 4)
    terms = [LossTerm(t, (t,), 1.0) for t in ("labels", "rotation", "exemplar")]
    attach_sources(state, terms, data, 6, 0)
    before = [p.detach().clone() for p in model.parameters()]
    train(state, terms, 4)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_error_is_the_primary_of_an_error_classification_and_agrees_with_accuracy():
    from ntlab.core.evaluate import evaluate_on

    torch.manual_seed(0)
    backbone = BACKBONES.get("cnn")(image_size=8, width=4, input_shape=(1, 8, 8))
    spec = classification_task(3, "error")
    model = MultiTaskModel(backbone, {"t": spec})
    x, y = (torch.rand(20, 1, 8, 8) * 255).byte(), torch.arange(20) % 3
    values, pairing = evaluate_on(model, "t", spec, x, y)
    assert values["error"] == pytest.approx(100 - values["acc"])
    assert spec.primary == "error" and spec.higher_is_better is False
    assert evaluate_on(model, "t", spec, x, y, pair=False)[0] == {"error": values["error"]}
    with pytest.raises(NtlabError):
        classification_task(3, "f1")


def test_wrn_28_2_is_the_paper_s_backbone_on_grey_images():
    model = BACKBONES.get("wrn-28-2")(input_shape=(1, 28, 28))
    assert 1.4e6 < sum(p.numel() for p in model.parameters()) < 1.5e6
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 128) and model.out_features == 128
    with pytest.raises(NtlabError, match="RGB"):
        BACKBONES.get("resnet18")(input_shape=(1, 28, 28))


def test_gcs_of_an_error_scored_target_is_the_accuracy_gain_and_val_score_the_error():
    from ntlab.analysis.gcs import gcs_table
    from ntlab.config import GcsOptions

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(60, 1, 8, 8, generator=g) * 255).byte()
    y = torch.arange(60) % 3
    tables = []
    for primary in ("acc", "error"):
        spec = classification_task(3, primary)
        data = {
            "t": TaskData("t", 3, {"train": (x, y), "val": (x, y)}, spec),
            "a": TaskData("a", 3, {"train": (x.flip(-1), y)}, classification_task(3)),
        }
        torch.manual_seed(0)
        backbone = BACKBONES.get("cnn")(image_size=8, width=4, input_shape=(1, 8, 8))
        model = MultiTaskModel(backbone, {"t": spec, "a": data["a"].spec})
        opts = GcsOptions(lams=(0.0, 1.0, 8.0), batches=2, eta=0.5, batch_size=16)
        tables.append(gcs_table(model, data, "t", ["a"], opts)[0])
    acc, err = tables
    assert acc["tg"].abs().sum() > 0  # the steps change what the model gets right
    assert err["tg"].tolist() == pytest.approx(acc["tg"].tolist())
    assert err["val_score"].tolist() == pytest.approx((100 - acc["val_score"]).tolist())


def test_five_dimensional_inputs_without_views_reach_the_backbone_whole():
    """A volume [B, C, D, H, W] is not views: only a task that declares views is flattened."""
    from torch import nn

    from ntlab.core.evaluate import evaluate_on

    class Volumes(nn.Sequential):
        def __init__(self) -> None:
            super().__init__(nn.Conv3d(1, 4, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten())
            self.out_features = 4

    spec = classification_task(3)
    model = MultiTaskModel(Volumes(), {"t": spec})
    x, y = torch.rand(6, 1, 4, 8, 8), torch.arange(6) % 3
    (loss,), _ = term_losses(model, [(x, y, torch.zeros(6, dtype=torch.long))], [[0]])
    assert torch.isfinite(loss)
    assert set(evaluate_on(model, "t", spec, x, y)[0]) >= {"acc", "loss"}
    with pytest.raises(NtlabError, match="only a custom task"):
        from dataclasses import replace

        replace(spec, views=2)
