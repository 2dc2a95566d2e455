import math

import pytest
import torch

from ntlab import dense_metrics as dm

# A 2×3 image of 3 classes, one pixel ignored:
#   target  0  0  1        prediction  0  1  1
#           2 -1  2                    2  0  1
TARGET = torch.tensor([[[0, 0, 1], [2, -1, 2]]])
PRED = torch.tensor([[[0, 1, 1], [2, 0, 1]]])


def test_confusion_matrix_counts_target_rows_and_prediction_columns_without_ignored():
    m = dm.confusion_matrix(PRED, TARGET, classes=3)
    assert m.dtype == torch.int64
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 1]]


def test_confusion_matrix_takes_logits_as_their_argmax():
    logits = torch.nn.functional.one_hot(PRED, 3).permute(0, 3, 1, 2).float() * 5
    assert torch.equal(dm.confusion_matrix(logits, TARGET, 3), dm.confusion_matrix(PRED, TARGET, 3))


def test_miou_and_pixel_accuracy_by_hand():
    m = dm.confusion_matrix(PRED, TARGET, classes=3)
    # IoU: class 0: 1/(2+1-1) = 1/2; class 1: 1/(1+3-1) = 1/3; class 2: 1/(2+1-1) = 1/2
    assert dm.miou(m) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert dm.pixel_accuracy(m) == pytest.approx(3 / 5)  # the ignored pixel is not counted


def test_miou_skips_classes_absent_from_target_and_prediction_but_counts_predicted_ones():
    m = dm.confusion_matrix(PRED, TARGET, classes=5)  # classes 3 and 4 never appear
    assert dm.miou(m) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    wrong = dm.confusion_matrix(torch.tensor([[4, 0]]), torch.tensor([[0, 0]]), classes=5)
    # class 4 is only predicted: its union is 1, its IoU 0, and it counts
    assert dm.miou(wrong) == pytest.approx((1 / 2 + 0) / 2)
    assert math.isnan(dm.miou(torch.zeros(3, 3, dtype=torch.long)))


def test_confusion_matrix_refuses_labels_out_of_range():
    with pytest.raises(ValueError, match="0..2"):
        dm.confusion_matrix(torch.tensor([[3]]), torch.tensor([[0]]), classes=3)


def test_segmentation_over_two_batches_equals_one_batch():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(-1, 4, (6, 5, 7), generator=g)
    logits = torch.randn(6, 4, 5, 7, generator=g)
    whole = dm.SegmentationMeter(4)
    whole.update(logits, target)
    parts = dm.SegmentationMeter(4)
    parts.update(logits[:2], target[:2])
    parts.update(logits[2:], target[2:])
    assert torch.equal(whole.confusion, parts.confusion)
    assert whole.compute() == parts.compute()


def test_depth_errors_by_hand_leave_out_the_invalid_pixel():
    target = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])  # 0: no depth measured
    pred = torch.tensor([[[1.5, 1.0], [4.0, 9.0]]])
    out = dm.depth_errors(pred, target)
    assert out["abs_err"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert out["rel_err"] == pytest.approx((0.5 / 1 + 1.0 / 2 + 0.0) / 3)
    valid = torch.tensor([[[True, False], [False, False]]])
    assert dm.depth_errors(pred, target, valid) == pytest.approx({"abs_err": 0.5, "rel_err": 0.5})
    with pytest.raises(ValueError, match="not > 0"):
        dm.depth_errors(pred, target, torch.ones_like(valid))


def test_depth_over_two_batches_equals_one_batch():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(5, 1, 4, 6, generator=g) * (torch.rand(5, 1, 4, 6, generator=g) > 0.3)
    pred = torch.rand(5, 1, 4, 6, generator=g)
    parts = dm.DepthMeter()
    parts.update(pred[:3], target[:3])
    parts.update(pred[3:], target[3:])
    assert parts.compute() == pytest.approx(dm.depth_errors(pred, target))


def _normals(*vectors):
    """[1, 3, 1, N] from N 3-vectors."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, -1)


def test_normal_angles_at_known_angles_and_the_zero_target_is_invalid():
    target = _normals((0, 0, 1), (0, 0, 1), (0, 0, 1), (0, 0, 0), (1, 0, 0))
    pred = _normals((0, 0, 5), (0, 2, 0), (0, 0, -1), (1, 0, 0), (1, 1, 0))
    angles = dm.normal_angles(pred, target)
    assert angles.tolist() == pytest.approx([0.0, 90.0, 180.0, 45.0], abs=1e-4)
    out = dm.normal_summary(angles)
    assert out["mean_angle"] == pytest.approx((0 + 90 + 180 + 45) / 4, abs=1e-4)
    assert out["median_angle"] == pytest.approx((45 + 90) / 2, abs=1e-4)
    assert out["within_11.25"] == 0.25 and out["within_22.5"] == 0.25
    assert out["within_30"] == 0.25
    assert set(out) <= set(dm.HIGHER_IS_BETTER)


def test_normal_angles_are_accurate_near_zero_and_a_zero_prediction_is_90_degrees():
    small = math.radians(0.01)
    target = _normals((1, 0, 0), (0, 1, 0))
    pred = _normals((math.cos(small), math.sin(small), 0), (0, 0, 0))
    assert dm.normal_angles(pred, target).tolist() == pytest.approx([0.01, 90.0], abs=1e-5)


def test_normals_over_two_batches_equal_one_batch():
    g = torch.Generator().manual_seed(2)
    target, pred = torch.randn(4, 3, 3, 5, generator=g), torch.randn(4, 3, 3, 5, generator=g)
    target[0, :, 1, 1] = 0
    parts = dm.NormalMeter()
    parts.update(pred[:1], target[:1])
    parts.update(pred[1:], target[1:])
    whole = dm.normal_summary(dm.normal_angles(pred, target))
    assert parts.compute() == pytest.approx(whole)
    assert len(torch.cat(parts.angles)) == 4 * 15 - 1


def test_every_reported_metric_has_a_direction():
    seg = dm.SegmentationMeter(3)
    seg.update(PRED, TARGET)
    names = set(seg.compute()) | set(dm.depth_errors(torch.ones(1, 2), torch.ones(1, 2)))
    names |= set(dm.normal_summary(torch.tensor([1.0])))
    assert names == set(dm.HIGHER_IS_BETTER)
    assert [k for k, up in dm.HIGHER_IS_BETTER.items() if not up] == [
        "abs_err",
        "rel_err",
        "mean_angle",
        "median_angle",
    ]


def test_losses_by_hand():
    logits = torch.tensor([[[[0.0, 2.0]], [[0.0, 0.0]]]])  # [1, 2 classes, 1, 2]
    target = torch.tensor([[[1, -1]]])
    assert float(dm.segmentation_loss(logits, target)) == pytest.approx(math.log(2))
    d = dm.depth_loss(torch.tensor([[1.0, 3.0, 7.0]]), torch.tensor([[2.0, 1.0, 0.0]]))
    assert float(d) == pytest.approx((1 + 2) / 2)
    n = dm.normal_loss(
        _normals((0, 0, 3), (0, 1, 0), (1, 0, 0)), _normals((0, 0, 1), (0, 0, 2), (0, 0, 0))
    )
    assert float(n) == pytest.approx((0 + 1) / 2)


def _grad_after(loss_fn, pred, *args):
    pred = pred.clone().requires_grad_(True)
    loss = loss_fn(pred, *args)
    loss.backward()
    return loss, pred.grad


@pytest.mark.parametrize(
    "loss_fn, pred, target",
    [
        (dm.segmentation_loss, torch.randn(2, 4, 3, 3), torch.full((2, 3, 3), -1)),
        (dm.depth_loss, torch.rand(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)),
        (dm.depth_loss, torch.rand(2, 1, 3, 3), torch.full((2, 1, 3, 3), math.nan)),
        (dm.normal_loss, torch.randn(2, 3, 3, 3), torch.zeros(2, 3, 3, 3)),
    ],
)
def test_losses_without_a_valid_pixel_are_zero_with_a_zero_gradient(loss_fn, pred, target):
    loss, grad = _grad_after(loss_fn, pred, target)
    assert loss.dim() == 0 and float(loss.detach()) == 0.0
    assert grad is not None and torch.equal(grad, torch.zeros_like(grad))


def test_losses_stay_finite_with_nan_targets_at_invalid_pixels_and_zero_predictions():
    target = torch.rand(2, 1, 4, 4) + 0.5
    target[0, 0, 0] = math.nan  # a row of missing depth
    target[1, 0, 1] = 0.0
    loss, grad = _grad_after(dm.depth_loss, torch.rand(2, 1, 4, 4), target)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.equal(grad[0, 0, 0], torch.zeros(4))
    normals = torch.randn(2, 3, 4, 4)
    normals[0, :, 0] = 0
    pred = torch.randn(2, 3, 4, 4)
    pred[1, :, 2] = 0  # a zero prediction: normalising it must not make NaN
    loss, grad = _grad_after(dm.normal_loss, pred, normals)
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    logits = torch.randn(2, 5, 4, 4)
    loss, grad = _grad_after(dm.segmentation_loss, logits, torch.randint(-1, 5, (2, 4, 4)))
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_segmentation_loss_equals_cross_entropy_over_the_kept_pixels():
    g = torch.Generator().manual_seed(3)
    logits, target = (
        torch.randn(3, 4, 5, 5, generator=g),
        torch.randint(-1, 4, (3, 5, 5), generator=g),
    )
    want = torch.nn.functional.cross_entropy(logits, target, ignore_index=-1)
    assert float(dm.segmentation_loss(logits, target)) == pytest.approx(float(want))
