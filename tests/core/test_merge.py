import pytest
import torch
from torch import nn

from ntlab.core.merge import MergeSpace, merge_state_dicts
from ntlab.errors import NtlabError


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))  # materialise, and move the BatchNorm statistics
    model[1].num_batches_tracked.fill_(seed + 1)
    return model


def test_merging_identical_states_is_the_identity():
    state = net(0).state_dict()
    merged = merge_state_dicts([state, state, state], [0.2, 0.5, 0.3])
    for key, value in state.items():
        assert (
            torch.allclose(merged[key], value, atol=1e-6)
            if value.is_floating_point()
            else torch.equal(merged[key], value)
        )


@pytest.mark.parametrize("b", [0, 1, 2])
def test_a_one_hot_lambda_returns_that_branch_exactly(b):
    states = [net(s).state_dict() for s in range(3)]
    weights = [0.0, 0.0, 0.0]
    weights[b] = 1.0
    merged = merge_state_dicts(states, weights)
    for key in states[b]:
        assert torch.equal(merged[key], states[b][key]), key


def test_float_tensors_are_the_convex_combination():
    a, b = net(0).state_dict(), net(1).state_dict()
    merged = merge_state_dicts([a, b], [0.25, 0.75])
    for key in ("0.weight", "1.running_mean", "1.running_var", "3.bias"):
        assert torch.allclose(merged[key], 0.25 * a[key] + 0.75 * b[key])


def test_integer_buffers_are_not_averaged():
    a, b = net(0).state_dict(), net(5).state_dict()  # counters 1 and 6
    assert merge_state_dicts([a, b], [0.4, 0.6])["1.num_batches_tracked"].item() == 6
    assert merge_state_dicts([a, b], [0.7, 0.3])["1.num_batches_tracked"].item() == 1
    assert merge_state_dicts([a, b], [0.4, 0.6])["1.num_batches_tracked"].dtype == torch.int64


def test_load_into_writes_the_merge_into_an_existing_model():
    states = [net(s).state_dict() for s in range(2)]
    probe = net(9)
    space = MergeSpace(states)
    space.load_into(probe, [0.5, 0.5])
    expected = space.combine([0.5, 0.5])
    for key, value in probe.state_dict().items():
        assert torch.equal(value, expected[key]), key
    x = torch.randn(3, 3, 6, 6)
    probe.eval()
    space.load_into(probe, [1.0, 0.0])
    reference = net(0)
    reference.load_state_dict(states[0])
    reference.eval()
    assert torch.equal(probe(x), reference(x))


@pytest.mark.parametrize("weights", [[0.5, 0.6], [1.2, -0.2], [1.0]])
def test_bad_weights_are_rejected(weights):
    states = [net(0).state_dict(), net(1).state_dict()]
    with pytest.raises(NtlabError):
        merge_state_dicts(states, weights)


def test_batchnorm_recalibration_gives_the_exact_batch_statistics():
    from ntlab.core.merge import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    model[1].running_mean.fill_(5.0)  # stale, as after averaging
    batches = [torch.randn(8, 3, 6, 6) for _ in range(3)]
    model.eval()
    assert recalibrate_batchnorm(model, batches) == 1
    conv_out = torch.cat([model[0](x) for x in batches])
    assert torch.allclose(model[1].running_mean, conv_out.mean((0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training  # restored


def test_recalibration_is_a_no_op_without_batchnorm():
    from ntlab.core.merge import recalibrate_batchnorm
    from ntlab.models import SmallCNN

    model = SmallCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert recalibrate_batchnorm(model, [torch.randn(2, 3, 16, 16)]) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
