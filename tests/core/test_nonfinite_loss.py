"""A training whose loss becomes NaN or inf stops, naming the term and the steps."""

import math

import pytest
import torch

from ntlab.core.runner import TrainConfig, build_model
from ntlab.core.state import OptimConfig, TrainState
from ntlab.core.train import LossTerm, NonFiniteLossError, attach_sources, train
from ntlab.data import get_benchmark
from ntlab.errors import NtlabError


def diverging_state(steps: int):
    data = get_benchmark("digits").load(["mnist", "syn"])
    model = build_model(TrainConfig(target="mnist"), data, torch.device("cpu"))
    state = TrainState.create(model, OptimConfig("sgd", lr=1e30), total_steps=steps)
    terms = [LossTerm("mnist", ("mnist",), 1.0), LossTerm("syn", ("syn",), 1.0)]
    attach_sources(state, terms, data, batch_size=8, seed=0)
    return state, terms


def test_a_diverging_training_stops_at_the_first_log_window(tiny_digits):
    state, terms = diverging_state(40)
    logged = []
    with pytest.raises(NonFiniteLossError) as exc:
        train(state, terms, 40, log_every=4, on_log=lambda s, v: logged.append(s))
    err = exc.value
    assert isinstance(err, NtlabError) and err.term == "mnist"
    assert (err.first, err.last) == (1, 4) and state.step == 4
    assert "loss of mnist became nan at or before step 4 (between steps 1 and 4)" in str(err)
    assert logged == []  # a non-finite window is never logged as a number


def test_the_check_runs_without_a_log_callback(tiny_digits):
    state, terms = diverging_state(10)
    with pytest.raises(NonFiniteLossError):
        train(state, terms, 10, log_every=5)  # ternary and probes train without on_log
    assert state.step == 5


@pytest.mark.parametrize("weight", [math.nan, math.inf, -1.0])
def test_a_non_finite_task_weight_is_refused(tiny_digits, weight):
    state, terms = diverging_state(1)
    with pytest.raises(NtlabError, match="weights must be ≥ 0 and finite"):
        train(state, [terms[0], LossTerm("syn", ("syn",), weight)], 1)
