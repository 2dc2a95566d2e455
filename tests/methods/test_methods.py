"""Every registered method on the shared core (a contract over the registry), and the
weighting rules against hand-computed references."""

from __future__ import annotations

import math
import re

import pytest
import torch

from ntlab.core.runner import TrainConfig, run_training
from ntlab.methods import METHODS
from ntlab.methods.auxiliary import (
    AuxiliaryReweighting,
    GradientCosineSimilarity,
    OnlineAuxiliary,
    cosines_to_target,
)
from ntlab.methods.weighting import DynamicWeightAverage, GradNorm
from ntlab.metrics import delta_m


def tiny(method: str, seed: int = 0) -> TrainConfig:
    return TrainConfig(
        target="optdigits", method=method, aux=["mnist", "syn"], steps=6, batch_size=8,
        eval_every=6, seed=seed,
    )  # fmt: skip


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_changes_the_model_and_repeats(tiny_digits, name):
    torch.manual_seed(0)
    start = run_training(TrainConfig(**{**tiny(name).__dict__, "steps": 1, "eval_every": 1}))
    first = run_training(tiny(name))
    again = run_training(tiny(name))
    params = dict(first.state.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values()), "non-finite parameters"
    before = dict(start.state.model.named_parameters())
    moved = [
        n for n in params if n.startswith("backbone") and not torch.equal(params[n], before[n])
    ]
    assert moved, "the shared backbone did not change"
    for n, p in again.state.model.named_parameters():
        assert torch.equal(p, params[n]), f"{name} is not deterministic under a seed ({n})"
    assert first.results["test_score"] == again.results["test_score"]
    assert 0 <= first.results["test_score"] <= 100


def test_the_registry_has_every_method_of_the_issue():
    assert set(METHODS) >= {
        "stl", "ew", "fixed", "uw", "dwa", "gradnorm", "rlw", "mgda", "pcgrad", "imtl",
        "cagrad", "nashmtl", "gradvac", "upgrad", "aligned-mtl", "gcs", "ol-aux", "arml",
        "auto-lambda", "post-train",
    }  # fmt: skip
    for name in METHODS:
        rule = METHODS.get(name).rule
        if rule is not None:  # the docstring names the paper (with its year) it implements
            assert rule.__doc__ and re.search(r"\b(19|20)\d\d\b", rule.__doc__), name


def test_adaptive_methods_log_their_weights(tiny_digits):
    out = run_training(tiny("rlw"))
    weights = [r for r in out.metrics if r["metric"] == "weight"]
    assert {r["task"] for r in weights} == {"optdigits", "mnist", "syn"}
    last_step = max(r["step"] for r in weights)
    total = sum(r["value"] for r in weights if r["step"] == last_step)
    assert total == pytest.approx(1.0)  # softmax weights, averaged over the window


# --- loss weighting: hand-made loss histories ------------------------------------------------


def test_dwa_weights_from_the_last_two_windows():
    last, before = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 2.0, 2.0])
    w = DynamicWeightAverage.weights_from(last, before, temperature=2.0)
    e = [math.exp(r / 2) for r in (0.5, 1.0, 1.5)]
    assert w.tolist() == pytest.approx([3 * x / sum(e) for x in e])
    assert float(w.sum()) == pytest.approx(3.0)


def test_dwa_keeps_weight_one_for_two_windows_then_follows_the_ratio():
    class Ctx:
        term_names = ["a", "b"]
        device = torch.device("cpu")

        def option(self, name, default):
            return {"dwa_window": 2}.get(name, default)

    rule = DynamicWeightAverage(Ctx())
    history = [(1.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.5, 1.0), (0.25, 1.0), (0.25, 1.0)]
    used = []
    for step, (la, lb) in enumerate(history):
        losses = [torch.tensor(la, requires_grad=True), torch.tensor(lb, requires_grad=True)]
        used.append(rule.backward(losses, None, step, None).tolist())
    assert used[:4] == [[1.0, 1.0]] * 4  # two windows (of 2 steps) before the first ratio
    e = [math.exp(0.5 / 2), math.exp(1.0 / 2)]
    assert used[4] == pytest.approx([2 * x / sum(e) for x in e])


def test_gradnorm_balance_loss_and_its_gradient():
    w = torch.tensor([1.0, 1.0], requires_grad=True)
    norms, losses, initial = (
        torch.tensor([1.0, 3.0]),
        torch.tensor([1.0, 1.0]),
        torch.tensor([2.0, 1.0]),
    )
    loss = GradNorm.balance_loss(w, norms, losses, initial, alpha=1.5)
    r = [0.5 / 0.75, 1.0 / 0.75]  # inverse training rates relative to their mean
    target = [2.0 * r[0] ** 1.5, 2.0 * r[1] ** 1.5]
    assert float(loss.detach()) == pytest.approx(abs(1.0 - target[0]) + abs(3.0 - target[1]))
    loss.backward()
    # Both G_k = (1, 3) lie below their targets (1.09, 3.08): ∂/∂w_k = −‖∇L_k‖.
    assert w.grad.tolist() == pytest.approx([-1.0, -3.0])


def test_uw_moves_log_variances_against_their_gradient():
    from ntlab.methods.weighting import UncertaintyWeighting

    class Ctx:
        term_names = ["a", "b"]
        device = torch.device("cpu")
        lr = 0.1

    rule = UncertaintyWeighting(Ctx())
    losses = [torch.tensor(2.0, requires_grad=True), torch.tensor(0.5, requires_grad=True)]
    first = rule.backward(losses, None, 0, None)
    assert first.tolist() == pytest.approx([0.5, 0.5])
    assert losses[0].grad == pytest.approx(0.5)
    # ∂/∂s = ½ − ½ e^{−s} L = [−0.5, 0.25]: Adam's first step is −lr·sign.
    assert rule.s.detach().tolist() == pytest.approx([0.1, -0.1], abs=1e-6)


def test_rlw_weights_are_a_seeded_softmax():
    from ntlab.methods.weighting import RandomLossWeighting

    class Ctx:
        term_names = ["a", "b", "c"]
        device = torch.device("cpu")
        seed = 7

    draws = []
    for _ in range(2):
        rule = RandomLossWeighting(Ctx())
        losses = [torch.tensor(1.0, requires_grad=True) for _ in range(3)]
        draws.append(rule.backward(losses, None, 0, None))
    assert float(draws[0].sum()) == pytest.approx(1.0) and (draws[0] > 0).all()
    assert torch.equal(draws[0], draws[1])


# --- auxiliary methods: hand-made gradients --------------------------------------------------

JAC = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.1]])


def test_gcs_keeps_only_auxiliary_gradients_that_agree_with_the_target():
    assert cosines_to_target(JAC).tolist() == pytest.approx([1.0, 2**-0.5, -1 / 1.01**0.5])
    w = GradientCosineSimilarity.weights_from(JAC)
    assert w.tolist() == [1.0, 1.0, 0.0]
    assert (w @ JAC).tolist() == [2.0, 1.0]


def test_ol_aux_adds_beta_times_accumulated_cosines_and_keeps_weights_nonnegative():
    w = OnlineAuxiliary.updated(torch.ones(3), torch.tensor([5.0, 2.0, -200.0]), beta=0.01)
    assert w.tolist() == pytest.approx([1.0, 1.02, 0.0])


def test_arml_projection_onto_the_scaled_simplex():
    p = AuxiliaryReweighting.project(torch.tensor([3.0, 0.0]))
    assert p.tolist() == pytest.approx([2.0, 0.0])
    p = AuxiliaryReweighting.project(torch.tensor([1.2, 1.0]))
    assert p.tolist() == pytest.approx([1.1, 0.9])


def test_arml_weights_converge_to_the_constrained_least_squares_solution():
    class Ctx:
        term_names = ["t", "a", "b"]
        device = torch.device("cpu")

        def option(self, name, default):
            return default

    rule = AuxiliaryReweighting(Ctx())
    jac = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    for step in range(500):
        rule.weights(jac, step)
    # min (1 − α1)² + α2² subject to α1 + α2 = 2, α ≥ 0 → α = (1.5, 0.5)
    assert rule.alpha.tolist() == pytest.approx([1.5, 0.5], abs=1e-3)


# --- Δm -------------------------------------------------------------------------------------

NYU_LOWER = {("depth", "abs"), ("depth", "rel"), ("normal", "mean"), ("normal", "median")}


def nyu(seg, depth, normal):
    return {
        "seg": dict(zip(["miou", "pix"], seg)),
        "depth": dict(zip(["abs", "rel"], depth)),
        "normal": dict(zip(["mean", "median", "w11", "w22", "w30"], normal)),
    }


def test_delta_m_reproduces_forkmerge_on_nyuv2():
    """Table 7 of the paper: STL and ForkMerge rows; Δm = +4.03% with task-level averaging."""
    stl = nyu((51.42, 74.14), (41.74, 17.37), (22.82, 16.23, 36.58, 62.75, 73.52))
    fm = nyu((53.67, 75.64), (38.91, 16.47), (22.18, 15.60, 37.93, 64.29, 74.81))
    assert round(delta_m(fm, stl, NYU_LOWER), 2) == 4.03
    ew = nyu((52.13, 74.51), (39.03, 16.43), (24.14, 17.62, 33.98, 59.63, 70.93))
    assert round(delta_m(ew, stl, NYU_LOWER), 2) == 0.30
    assert delta_m(stl, stl, NYU_LOWER) == 0.0


# --- auxiliary-task methods on a model: what they leave alone ---------------------------------


def _model(backbone: str = "cnn"):
    from ntlab.models import BACKBONES, MultiTaskModel

    torch.manual_seed(0)
    return MultiTaskModel(BACKBONES.get(backbone)(image_size=16), {"t": 10, "a": 10})


def test_gcs_gates_only_the_shared_gradient_heads_learn_from_their_own_loss():
    from ntlab.core.rules import RuleContext

    model = _model()
    with torch.no_grad():  # the auxiliary head is the negated target head: cos(g_0, g_1) = −1
        model.heads[1].weight.copy_(-model.heads[0].weight)
        model.heads[1].bias.copy_(-model.heads[0].bias)
    x = torch.rand(8, 3, 16, 16)
    features = model.features(x)
    losses = [model.heads[0](features).sum(), model.heads[1](features).sum()]
    ctx = RuleContext(model=model, term_names=["t", "a"], term_heads=[[0], [1]], steps=1, lr=1e-3)
    weights = GradientCosineSimilarity(ctx).backward(losses, features, 0, [])
    assert weights.tolist() == [1.0, 0.0]  # the conflicting auxiliary gradient is gated
    expected = features.detach().sum(0, keepdim=True).expand_as(model.heads[1].weight)
    assert torch.allclose(model.heads[1].weight.grad, expected)  # … but not its own head


def _auto_lambda(model, tiny_digits_data, steps=5):
    from ntlab.core.rules import RuleContext
    from ntlab.data.sampler import BatchSource, seeded_generator
    from ntlab.methods.auxiliary import AutoLambda

    t, a = tiny_digits_data["optdigits"], tiny_digits_data["mnist"]
    src = [BatchSource([d], [h], 8, seeded_generator(0, str(h))) for d, h in ((t, 0), (a, 1))]
    val = BatchSource([t], [0], 8, seeded_generator(0, "val"), augment=False)
    ctx = RuleContext(
        model=model, term_names=["t", "a"], term_heads=[[0], [1]], steps=steps, lr=1e-3,
        val_batches=val.next, options={"auto_lambda_lr": 1e-2},
    )  # fmt: skip
    return AutoLambda(ctx), src


@pytest.fixture
def digits_data(tiny_digits):
    from ntlab.data import get_benchmark

    return get_benchmark("digits").load(["optdigits", "mnist"], torch.device("cpu"))


def test_auto_lambda_starts_at_the_official_0_1_and_moves(digits_data):
    from ntlab.core.train import term_losses

    model = _model()
    rule, sources = _auto_lambda(model, digits_data)
    assert rule.lam.tolist() == pytest.approx([0.1, 0.1])
    for step in range(5):
        batches = [s.next() for s in sources]
        losses, features = term_losses(model, batches, [[0], [1]])
        rule.backward(losses, features, step, batches)
        model.zero_grad(set_to_none=True)
    assert (rule.lam.detach() - 0.1).abs().max() > 1e-3  # the meta steps move λ


def test_auto_lambda_meta_passes_leave_batchnorm_statistics_alone(digits_data):
    from ntlab.core.train import term_losses
    from ntlab.models.multitask import frozen_batchnorm_statistics

    model = _model("resnet18")
    model.train()
    rule, sources = _auto_lambda(model, digits_data)
    batches = [s.next() for s in sources]
    with frozen_batchnorm_statistics(model):  # the training pass itself is not under test
        losses, features = term_losses(model, batches, [[0], [1]])
    before = {k: v.clone() for k, v in model.named_buffers()}
    rule.backward(losses, features, 0, batches)
    for k, v in model.named_buffers():
        assert torch.equal(before[k], v), f"{k} moved in Auto-λ's meta passes"
