import pytest
import torch
import torch.nn.functional as F

from ntlab.core import runner
from ntlab.core.evaluate import evaluate, predict
from ntlab.core.runner import TrainConfig, build_model, run_training
from ntlab.core.state import OptimConfig, TrainState
from ntlab.core.train import LossTerm, attach_sources, train
from ntlab.data import get_benchmark
from ntlab.errors import NtlabError
from ntlab.models import MultiTaskModel, SmallCNN


def test_a_step_changes_only_the_shared_backbone_and_the_trained_heads(tiny_digits):
    data = get_benchmark("digits").load(["mnist", "syn", "permlo"])
    model = build_model(TrainConfig(target="mnist"), data, torch.device("cpu"))
    state = TrainState.create(model, OptimConfig(), total_steps=1)
    terms = [LossTerm("mnist", ("mnist",), 1.0), LossTerm("syn", ("syn",), 0.0)]
    attach_sources(state, terms, data, batch_size=8, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(state, terms, 1)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    backbone = {k for k in before if k.startswith("backbone.")}
    assert backbone <= changed
    assert {"heads.0.weight", "heads.0.bias"} <= changed  # mnist
    assert not changed & {"heads.1.weight", "heads.1.bias", "heads.2.weight", "heads.2.bias"}


def test_a_zero_weight_task_is_never_loaded(tiny_digits, monkeypatch):
    loaded = []
    bench_cls = type(get_benchmark("digits"))
    real_load = bench_cls.load

    def spy(self, tasks, device="cpu"):
        loaded.extend(tasks)
        return real_load(self, tasks, device)

    monkeypatch.setattr(bench_cls, "load", spy)
    cfg = TrainConfig(target="mnist", method="fixed", aux=["syn", "permlo"], lam=0.0, steps=3)
    outcome = run_training(cfg)
    assert loaded == ["mnist"]
    assert set(outcome.state.sources) == {"mnist"}
    assert list(outcome.results["tasks"]) == ["mnist"]


def test_zero_weight_terms_draw_no_batches(tiny_digits):
    data = get_benchmark("digits").load(["mnist", "syn"])
    model = build_model(TrainConfig(target="mnist"), data, torch.device("cpu"))
    state = TrainState.create(model, OptimConfig(), total_steps=5)
    on = [LossTerm("mnist", ("mnist",), 1.0), LossTerm("syn", ("syn",), 1.0)]
    attach_sources(state, on, data, batch_size=8, seed=0)
    off = [on[0], LossTerm("syn", ("syn",), 0.0)]
    train(state, off, 5)
    assert state.sources["mnist"].batches_drawn == 5
    assert state.sources["syn"].batches_drawn == 0


def test_negative_weights_are_rejected(tiny_digits):
    with pytest.raises(NtlabError, match="weights must be ≥ 0"):
        train(None, [LossTerm("a", ("a",), -1.0)], 1)


def test_mixed_batch_loss_routes_each_sample_to_its_own_head():
    torch.manual_seed(0)
    model = MultiTaskModel(SmallCNN(image_size=16), {"a": 10, "b": 10, "c": 10})
    feats = torch.randn(12, model.backbone.out_features)
    y = torch.randint(10, (12,))
    heads = torch.tensor([1, 2, 1, 1, 2, 2, 1, 2, 2, 1, 1, 2])
    reference = torch.stack(
        [F.cross_entropy(model.heads[h](f[None]), t[None]) for f, t, h in zip(feats, y, heads)]
    ).mean()
    assert torch.allclose(model.routed_loss(feats, y, heads, [1, 2]), reference, atol=1e-6)


def test_evaluate_matches_a_reference_accuracy(tiny_digits):
    from sklearn.metrics import accuracy_score

    data = get_benchmark("digits").load(["syn"])
    model = build_model(TrainConfig(target="syn"), data, torch.device("cpu"))
    logits, _ = predict(model, "syn", data["syn"].x("test"), data["syn"].y("test"))
    pred = logits.argmax(1)
    acc = accuracy_score(data["syn"].y("test").numpy(), pred.numpy()) * 100
    assert evaluate(model, data["syn"], "test")["acc"] == pytest.approx(acc)


def test_same_config_and_seed_give_identical_results(tiny_digits):
    cfg = TrainConfig(target="mnistm", method="ew", aux=["mnist", "permlo"], steps=12, eval_every=5)
    a, b = run_training(cfg), run_training(cfg)
    assert a.results == b.results
    assert a.metrics == b.metrics
    c = run_training(TrainConfig(**{**cfg.__dict__, "seed": 1}))
    assert c.metrics != a.metrics


def test_evaluation_frequency_does_not_change_training(tiny_digits):
    a = run_training(TrainConfig(target="syn", steps=9, eval_every=2))
    b = run_training(TrainConfig(target="syn", steps=9, eval_every=9))
    assert a.results == b.results
    assert runner.cache_key(a_cfg := TrainConfig(target="syn", eval_every=2)) == runner.cache_key(
        TrainConfig(**{**a_cfg.__dict__, "eval_every": 9})
    )


def test_target_batches_do_not_depend_on_the_auxiliary_tasks(tiny_digits):
    stl = run_training(TrainConfig(target="mnist", steps=2))
    ew = run_training(TrainConfig(target="mnist", method="ew", aux=["syn"], steps=2))
    a, b = stl.state.sources["mnist"], ew.state.sources["mnist"]
    assert torch.equal(a.next()[1], b.next()[1])


def test_training_learns_the_tiny_task(tiny_digits):
    out = run_training(TrainConfig(target="optdigits", steps=150, lr=3e-3))
    assert out.results["test_score"] > 50  # chance is 10


def test_stl_baseline_is_reused_from_the_cache(tiny_digits):
    cfg = TrainConfig(target="syn", method="ew", aux=["mnist"], steps=4, seed=7)
    first, source1 = runner.stl_baseline(cfg)
    second, source2 = runner.stl_baseline(cfg)
    assert (source1, source2) == ("run", "cache")
    assert first == second
    other, source3 = runner.stl_baseline(TrainConfig(**{**cfg.__dict__, "seed": 8}))
    assert source3 == "run"


def test_the_cache_key_ignores_what_a_method_ignores(tiny_digits):
    key = runner.cache_key

    def variant(cfg, **changes):
        return TrainConfig(**{**cfg.__dict__, **changes})

    stl = TrainConfig(target="syn", method="stl", aux=["mnist"], lam=0.3)
    assert key(stl) == key(TrainConfig(target="syn", method="stl"))
    ew = TrainConfig(target="syn", method="ew", aux=["mnist"])
    assert key(ew) == key(variant(ew, lam=0.5))
    assert key(ew) != key(variant(ew, aux=["permlo"]))
    fixed = TrainConfig(target="syn", method="fixed", aux=["mnist"], lam=0.25)
    assert key(fixed) != key(variant(fixed, lam=0.5))
    assert key(fixed) != key(variant(fixed, steps=7))
