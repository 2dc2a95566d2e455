"""The authors' choices as training options: threads, BatchNorm batches, checkpoint
selection and loss reduction (README: "BatchNorm, threads and the authors' choices")."""

import json

import pytest
import torch
from typer.testing import CliRunner

from ntlab.cli import app
from ntlab.core.runner import (
    TrainConfig,
    build_model,
    cache_key,
    run_cache_dir,
    run_training,
    store_run,
)
from ntlab.core.state import OptimConfig, TrainState
from ntlab.core.train import LossTerm, attach_sources, term_losses, train
from ntlab.data import get_benchmark

TASKS = ["mnist", "syn", "permlo"]
FAST = ["--steps", "4", "--eval-every", "2", "--batch-size", "8"]


@pytest.fixture
def keep_threads():
    """Tests that set torch's thread count give the session's count back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _batches(data, model, seed=0):
    terms = [LossTerm(t, (t,), 1.0) for t in TASKS]
    state = TrainState.create(model, OptimConfig(), total_steps=1)
    attach_sources(state, terms, data, batch_size=8, seed=seed)
    batches = [state.sources[t].next() for t in TASKS]
    heads = [[model.head_index(t)] for t in TASKS]
    return batches, heads


def _model(backbone, data):
    return build_model(TrainConfig(target="mnist", backbone=backbone), data, torch.device("cpu"))


# --- threads ------------------------------------------------------------------------------


def test_threads_are_part_of_the_cache_key(tiny_digits, keep_threads):
    base = dict(target="mnist", method="ew", aux=["syn"], steps=3)
    one, two = TrainConfig(**base, threads=1), TrainConfig(**base, threads=2)
    assert cache_key(one) != cache_key(two)
    torch.set_num_threads(2)
    assert cache_key(TrainConfig(**base)) == cache_key(two)  # None: torch's current count
    torch.set_num_threads(1)
    assert cache_key(TrainConfig(**base)) == cache_key(one)


def test_a_training_runs_with_its_threads_and_the_cache_records_the_count(
    tiny_digits, keep_threads
):
    torch.set_num_threads(1)
    cfg = TrainConfig(target="mnist", steps=2, eval_every=2, batch_size=8, threads=2, seed=7)
    outcome = run_training(cfg)
    assert torch.get_num_threads() == 2
    store_run(cfg, outcome)
    saved = json.loads((run_cache_dir(cfg) / "config.json").read_text())
    assert saved["threads"] == 2
    default = TrainConfig(target="mnist", steps=2, eval_every=2, batch_size=8, seed=8)
    store_run(default, run_training(default))
    saved = json.loads((run_cache_dir(default) / "config.json").read_text())
    assert saved["threads"] == torch.get_num_threads() == 2  # None: what torch had


def test_config_json_records_the_resolved_thread_count(tiny_digits, tmp_path, keep_threads):
    runner = CliRunner()
    out = tmp_path / "default"
    result = runner.invoke(app, ["train", "-t", "mnist", *FAST, "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["train"]["threads"] == (
        torch.get_num_threads()
    )
    out = tmp_path / "two"
    args = ["train", "-t", "mnist", *FAST, "--threads", "2", "--out", str(out), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["train"]["threads"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threads", "0"], "--threads must be a positive number of threads"),
        (["--bn-batches", "pool"], "'pool' is not one of pooled, per-term; did you mean 'pooled'?"),
        (["--select", "best"], "'best' is not one of last, best-val; did you mean 'best-val'?"),
        (["--loss-reduction", "avg"], "'avg' is not one of sum, mean"),
    ],
)
def test_bad_option_values_exit_2_with_one_line(tiny_digits, tmp_path, args, message):
    result = CliRunner().invoke(
        app, ["train", "-t", "mnist", *FAST, *args, "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "r").exists()


# --- BatchNorm batches --------------------------------------------------------------------


def test_per_term_batches_give_the_pooled_losses_with_groupnorm(tiny_digits):
    data = get_benchmark("digits").load(TASKS)
    model = _model("cnn", data).train()
    batches, heads = _batches(data, model)
    pooled, f_pooled = term_losses(model, batches, heads)
    per_term, f_per_term = term_losses(model, batches, heads, per_term=True)
    assert f_pooled.shape == f_per_term.shape
    torch.testing.assert_close(f_per_term, f_pooled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.stack(per_term), torch.stack(pooled), rtol=1e-5, atol=1e-6)


def test_per_term_batches_are_normalised_on_their_own_with_batchnorm(tiny_digits):
    data = get_benchmark("digits").load(TASKS)
    model = _model("resnet18", data).train()
    batches, heads = _batches(data, model)
    pooled, _ = term_losses(model, batches, heads)
    per_term, features = term_losses(model, batches, heads, per_term=True)
    assert features.shape[0] == sum(len(b[1]) for b in batches)
    assert not torch.allclose(torch.stack(per_term), torch.stack(pooled), atol=1e-3)
    # each term's losses equal a pass over that term's batch alone
    alone, _ = term_losses(model, [batches[1]], [heads[1]])
    torch.testing.assert_close(per_term[1], alone[0], rtol=1e-5, atol=1e-6)


def test_gradient_balancing_trains_on_per_term_features(tiny_digits):
    cfg = TrainConfig(
        target="mnist", method="pcgrad", aux=["syn"], steps=2, eval_every=2, batch_size=8,
        bn_batches="per-term",
    )  # fmt: skip
    outcome = run_training(cfg)
    assert outcome.state.step == 2
    assert 0 <= outcome.results["test_score"] <= 100


# --- checkpoint selection -----------------------------------------------------------------


def test_best_val_keeps_the_best_checked_iterate(tiny_digits):
    common = dict(target="mnist", method="ew", aux=["syn"], steps=8, eval_every=2, batch_size=8)
    last = run_training(TrainConfig(**common, lr=0.05))
    best = run_training(TrainConfig(**common, lr=0.05, select="best-val"))
    checks = {r["step"]: r["value"] for r in best.metrics if r["split"] == "val" and
              r["task"] == "mnist" and r["metric"] == "acc" and r["step"] < 8}  # fmt: skip
    checks[8] = best.results["last"]["val_score"]
    step = best.results["selected_step"]
    assert best.results["select"] == "best-val"
    assert checks[step] == max(checks.values())
    assert min(s for s, v in checks.items() if v == max(checks.values())) == step  # first best
    assert best.results["val_score"] == pytest.approx(checks[step])
    # the training itself is the same: the last iterate is the `last` run's model
    assert best.results["last"]["val_score"] == last.results["val_score"]
    assert best.results["last"]["test_score"] == last.results["test_score"]
    assert "selected_step" not in last.results
    key = cache_key(TrainConfig(**common, lr=0.05))
    assert key != cache_key(TrainConfig(**common, lr=0.05, select="best-val"))


# --- loss reduction -----------------------------------------------------------------------


def test_mean_divides_the_summed_objective_by_the_number_of_terms(tiny_digits):
    data = get_benchmark("digits").load(TASKS)
    terms = [LossTerm(t, (t,), 1.0 + i) for i, t in enumerate(TASKS)]
    deltas = {}
    for reduction in ("sum", "mean"):
        model = _model("cnn", data)
        before = [p.detach().clone() for p in model.parameters()]
        state = TrainState.create(model, OptimConfig("sgd", lr=0.1, momentum=0.0), 1)
        attach_sources(state, terms, data, batch_size=8, seed=0)
        train(state, terms, 1, loss_reduction=reduction)
        deltas[reduction] = torch.cat(
            [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]
        )
    torch.testing.assert_close(deltas["mean"] * len(TASKS), deltas["sum"], rtol=1e-4, atol=1e-6)
