import torch

from ntlab.core.runner import TrainConfig, build_model
from ntlab.core.state import OptimConfig, TrainState
from ntlab.core.train import LossTerm, attach_sources, train
from ntlab.data import get_benchmark

TERMS = [LossTerm("mnist", ("mnist",), 1.0), LossTerm("aux", ("syn", "permlo"), 0.5)]


def make_state(tiny_digits, seed=0, steps=20):
    data = get_benchmark("digits").load(["mnist", "syn", "permlo"])
    model = build_model(TrainConfig(target="mnist", seed=seed), data, torch.device("cpu"))
    state = TrainState.create(model, OptimConfig(lr=1e-2), total_steps=steps)
    attach_sources(state, TERMS, data, batch_size=16, seed=seed)
    return state


def params(state):
    return {k: v.detach().clone() for k, v in state.model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_fork_is_an_independent_copy(tiny_digits):
    state = make_state(tiny_digits)
    train(state, TERMS, 3)
    before, moments = params(state), state.optimizer.state_dict()["state"][0]["exp_avg"].clone()
    drawn = {k: s.batches_drawn for k, s in state.sources.items()}
    fork = state.fork()
    assert same(params(fork), before)
    train(fork, TERMS, 5)
    assert not same(params(fork), before)
    assert same(params(state), before)
    assert torch.equal(state.optimizer.state_dict()["state"][0]["exp_avg"], moments)
    assert {k: s.batches_drawn for k, s in state.sources.items()} == drawn
    assert fork.sources["aux"].x is state.sources["aux"].x  # data shared, not copied
    assert fork.step == state.step + 5


def test_fork_continues_exactly_like_the_original(tiny_digits):
    state = make_state(tiny_digits)
    train(state, TERMS, 2)
    fork = state.fork()
    train(state, TERMS, 4)
    train(fork, TERMS, 4)
    assert same(params(state), params(fork))


def test_checkpoint_resume_gives_identical_parameters(tiny_digits, tmp_path):
    a = make_state(tiny_digits)
    train(a, TERMS, 3)
    a.save(tmp_path / "ckpt.pt")
    train(a, TERMS, 4)
    b = make_state(tiny_digits)
    b.load(tmp_path / "ckpt.pt")
    assert b.step == 3
    train(b, TERMS, 4)
    assert same(params(a), params(b))


def test_cosine_schedule_reaches_zero(tiny_digits):
    data = get_benchmark("digits").load(["mnist"])
    model = build_model(TrainConfig(target="mnist"), data, torch.device("cpu"))
    state = TrainState.create(model, OptimConfig(lr=0.1, schedule="cosine"), total_steps=10)
    attach_sources(state, TERMS[:1], data, batch_size=8, seed=0)
    lrs = []
    train(state, TERMS[:1], 10, on_step=lambda s: lrs.append(state.optimizer.param_groups[0]["lr"]))
    assert abs(lrs[4] - 0.05) < 1e-9 and lrs[-1] == 0.0


def test_step_schedule_halves_the_rate_from_half_the_budget_on(tiny_digits):
    data = get_benchmark("digits").load(["mnist"])
    model = build_model(TrainConfig(target="mnist"), data, torch.device("cpu"))
    state = TrainState.create(model, OptimConfig(lr=0.1, schedule="step"), total_steps=10)
    attach_sources(state, TERMS[:1], data, batch_size=8, seed=0)
    lrs = []
    train(state, TERMS[:1], 10, on_step=lambda s: lrs.append(state.optimizer.param_groups[0]["lr"]))
    assert lrs[:4] == [0.1] * 4 and lrs[4:] == [0.05] * 6  # the rate of steps 6…10 is halved


def test_late_step_schedule_is_a_fifth_from_80_percent_of_the_budget():
    from ntlab.core.state import Schedule

    rates = [Schedule("late-step", 200_000)(s) for s in (0, 159_999, 160_000, 199_999)]
    assert rates == [1.0, 1.0, 0.2, 0.2]  # the paper's SSL: ×0.2 at 160K of 200K
