import pytest
import torch
from torch import nn

from ntlab.core.merge import MergeOp, MergeSpace, merge_state_dicts
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


# --- merge operators: ties and dare on the deltas from the fork point -------------------


def _ops_states(*deltas, base=None):
    base = base if base is not None else torch.zeros(len(deltas[0]))
    return {"w": base}, [{"w": base + torch.tensor(d)} for d in deltas]


def test_ties_trims_elects_the_sign_and_averages_the_agreeing_entries():
    base, states = _ops_states([3.0, -1.0, 0.5, 2.0], [-2.0, -2.0, 1.0, 0.1])
    ties = MergeOp("ties", k=0.5)  # two of four entries kept per branch
    # A keeps (3, ·, ·, 2), B keeps (−2, −2, ·, ·); Λ-weighted sums 0.5, −1, 0, 1 elect + − 0 +
    merged = merge_state_dicts(states, [0.5, 0.5], ties, base)["w"]
    assert merged.tolist() == [3.0, -2.0, 0.0, 2.0]
    # more weight on B flips entry 0's election (0.25·3 − 0.75·2 < 0): B's −2 alone
    merged = merge_state_dicts(states, [0.25, 0.75], ties, base)["w"]
    assert merged.tolist() == [-2.0, -2.0, 0.0, 2.0]
    # agreeing entries are averaged with the weights Λ, from the base
    base, states = _ops_states([4.0], [2.0], base=torch.tensor([10.0]))
    merged = merge_state_dicts(states, [0.25, 0.75], MergeOp("ties", k=1.0), base)["w"]
    assert merged.item() == pytest.approx(10 + (0.25 * 4 + 0.75 * 2) / 1.0)


def test_ties_keeps_the_top_share_of_a_branch_over_all_its_entries():
    base = {"a": torch.zeros(2), "b": torch.zeros(1)}
    one = {"a": torch.tensor([1.0, 5.0]), "b": torch.tensor([3.0])}
    two = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([0.0])}
    merged = merge_state_dicts([one, two], [0.5, 0.5], MergeOp("ties", k=1 / 3), base)
    assert merged["a"].tolist() == [0.0, 5.0] and merged["b"].tolist() == [0.0]


def test_ties_with_every_entry_kept_and_one_branch_is_that_branch():
    torch.manual_seed(0)
    base = {"w": torch.randn(5, 3)}
    branch = {"w": base["w"] + torch.randn(5, 3)}
    assert torch.equal(
        merge_state_dicts([branch], [1.0], MergeOp("ties", k=1.0), base)["w"], branch["w"]
    )
    # and two copies of it merge to it as well (every entry agrees with itself)
    merged = merge_state_dicts([branch, branch], [0.3, 0.7], MergeOp("ties", k=1.0), base)
    assert torch.allclose(merged["w"], branch["w"], atol=1e-6)


def test_dare_with_p_0_is_the_average_and_otherwise_a_seeded_unbiased_draw():
    from ntlab.data.sampler import seeded_generator

    torch.manual_seed(0)
    base = {"w": torch.randn(200, 500)}
    states = [{"w": base["w"] + torch.randn(200, 500)} for _ in range(2)]
    average = merge_state_dicts(states, [0.3, 0.7])
    assert torch.equal(merge_state_dicts(states, [0.3, 0.7], MergeOp("dare", p=0.0), base)["w"],
                       average["w"])  # fmt: skip
    dare = MergeOp("dare", p=0.5, seed=3)
    merged = merge_state_dicts(states, [0.3, 0.7], dare, base)["w"]
    g = seeded_generator(3, "dare:merge")
    want = base["w"].clone()
    stacked = torch.stack([s["w"] - base["w"] for s in states])
    kept = torch.rand(stacked.shape, generator=g) >= 0.5
    for b, lam in enumerate([0.3, 0.7]):
        want += lam * torch.where(kept[b], stacked[b] / 0.5, 0)
    assert torch.allclose(merged, want, atol=1e-6)
    assert 0.45 < kept.float().mean() < 0.55
    # unbiased: the dropped-and-rescaled deltas average to the deltas themselves
    assert (merged - average["w"]).mean().abs() < 0.02
    again = merge_state_dicts(states, [0.3, 0.7], dare, base)["w"]
    assert torch.equal(merged, again)  # the same seed draws the same entries
    other = MergeSpace(states, op=dare, base=base, draw="round 2").combine([0.3, 0.7])["w"]
    assert not torch.equal(merged, other)


def test_every_operator_keeps_a_corner_exact_and_integer_buffers_from_the_heaviest():
    torch.manual_seed(1)
    base = {"w": torch.randn(4), "n": torch.tensor(0)}
    states = [{"w": base["w"] + torch.randn(4), "n": torch.tensor(b)} for b in range(3)]
    for op in (MergeOp("ties", k=0.25), MergeOp("dare", p=0.9)):
        space = MergeSpace(states, op=op, base=base)
        assert torch.equal(space.combine([0, 1, 0])["w"], states[1]["w"])
        assert space.combine([0.2, 0.3, 0.5])["n"].item() == 2


def test_a_bad_merge_operator_is_refused_with_its_option():
    for op, message in (
        (MergeOp("mean"), "--merge-op"),
        (MergeOp("ties", k=0.0), "--ties-k must be"),
        (MergeOp("dare", p=1.0), "--dare-p must be"),
    ):
        with pytest.raises(NtlabError, match=message):
            op.check()
    with pytest.raises(NtlabError, match="forked from"):
        MergeSpace([{"w": torch.zeros(1)}] * 2, op=MergeOp("ties"))
