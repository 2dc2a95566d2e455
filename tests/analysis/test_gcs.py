"""GCS vs one-step TG: the update, the evaluation and the table's invariants."""

import copy

import pytest
import torch

from ntlab.analysis.gcs import (
    GcsOptions,
    fit_heads,
    gcs_summary,
    gcs_table,
    one_step_outcomes,
    one_step_params,
)
from ntlab.core.evaluate import evaluate
from ntlab.core.runner import TrainConfig, trained_model
from ntlab.core.train import term_losses
from ntlab.data.files import to_float
from ntlab.data.sampler import BatchSource, seeded_generator
from ntlab.errors import NtlabError
from ntlab.metrics import paired_tg_se

AUX = ["mnist", "syn"]


@pytest.fixture(scope="module")
def pretrained(tiny_digits):
    cfg = TrainConfig(target="optdigits", steps=15, batch_size=16, device="cpu")
    model, data, _, _ = trained_model(cfg, tasks=AUX)
    return model, data


def test_one_step_params_match_a_manual_sgd_step(pretrained):
    model, data = pretrained
    head = model.head_index("optdigits")
    source = BatchSource([data["optdigits"]], [head], 16, seeded_generator(0, "t"))
    aux_source = BatchSource(
        [data["mnist"]], [model.head_index("mnist")], 16, seeded_generator(0, "a")
    )
    params = dict(model.named_parameters())
    names = [n for n in params if n.startswith("backbone.") or n.startswith(f"heads.{head}.")]
    g_t = dict(
        zip(
            names,
            torch.autograd.grad(
                term_losses(model, [source.next()], [[head]])[0][0], [params[n] for n in names]
            ),
        )
    )
    aux_loss = term_losses(model, [aux_source.next()], [[model.head_index("mnist")]])[0][0]
    g_a = dict(
        zip(
            names,
            torch.autograd.grad(
                aux_loss, [params[n] for n in names], allow_unused=True, materialize_grads=True
            ),
        )
    )
    lam, eta = 0.5, 0.1
    stacked = one_step_params(
        {n: params[n].detach() for n in names}, g_t, g_a, torch.tensor([0.0, lam]), eta
    )

    manual = copy.deepcopy(model)
    sgd = torch.optim.SGD(manual.parameters(), lr=eta)
    for n, p in manual.named_parameters():
        p.grad = (g_t[n] + lam * g_a[n]).clone() if n in names else None
    sgd.step()
    for n, p in manual.named_parameters():
        if n in names:
            assert torch.allclose(stacked[n][1], p, atol=1e-7), n
            assert torch.allclose(stacked[n][0], params[n] - eta * g_t[n], atol=1e-7), n

    # Scoring the stacked parameters equals evaluating the stepped module.
    task = data["optdigits"]
    correct, losses = one_step_outcomes(
        model, head, stacked, to_float(task.x("val")), task.y("val")
    )
    acc = (correct.double().mean(1) * 100).tolist()
    loss = losses.double().mean(1).tolist()
    reference = evaluate(manual, task, "val")
    assert acc[1] == pytest.approx(reference["acc"])
    assert loss[1] == pytest.approx(reference["loss"], rel=1e-5)


def test_gcs_table_invariants_and_reproducibility(pretrained):
    model, data = pretrained
    opts = GcsOptions(lams=(0.0, 0.25, 1.0), batches=4, eta=0.05, batch_size=16, seed=0)
    table, image_se = gcs_table(model, data, "optdigits", AUX, opts)
    assert len(table) == 4 * 3
    assert (table[table["lam"] == 0]["tg"] == 0).all()
    assert (table[table["lam"] == 0]["tg_loss"] == 0).all()
    assert table["gcs"].between(-1, 1).all()
    # One GCS per batch, shared by every λ of that batch.
    assert (table.groupby("batch")["gcs"].nunique() == 1).all()
    again, image_again = gcs_table(model, data, "optdigits", AUX, opts)
    assert table.equals(again) and image_se == image_again
    assert image_se[0.0] == {"tg": 0.0, "tg_loss": 0.0}  # λ = 0 against itself
    summary = gcs_summary(table, image_se)
    assert summary["batches"] == 4
    assert 0 <= summary["share_conflicting"] <= 1
    assert set(summary["per_lam"]) == {"0.25", "1"}
    assert summary["best_lam"] in (0.0, 0.25, 1.0)


def test_weight_decay_gradient_is_the_parameters(pretrained):
    model, data = pretrained
    opts = GcsOptions(lams=(0.0, 1.0), batches=2, eta=0.05, aux_kind="weight-decay", batch_size=16)
    table, _ = gcs_table(model, data, "optdigits", [], opts)
    # The cosine of g_tgt with θ itself, computed by hand for batch 0.
    head = model.head_index("optdigits")
    source = BatchSource([data["optdigits"]], [head], 16, seeded_generator(0, "gcs:optdigits"))
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    grads = torch.autograd.grad(term_losses(model, [source.next()], [[head]])[0][0], backbone)
    g = torch.cat([x.reshape(-1) for x in grads])
    theta = torch.cat([p.detach().reshape(-1) for p in backbone])
    expected = (g @ theta / (g.norm() * theta.norm())).item()
    assert table.loc[table["batch"] == 0, "gcs"].iloc[0] == pytest.approx(expected, abs=1e-5)


def test_fit_heads_trains_only_the_auxiliary_heads(pretrained):
    model, data = pretrained
    model = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit_heads(model, data, ["mnist"], steps=5, batch_size=16, seed=0)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    mnist = model.head_index("mnist")
    assert changed == {f"heads.{mnist}.weight", f"heads.{mnist}.bias"}
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (GcsOptions(batches=0), "--batches"),
        (GcsOptions(eta=0), "--eta"),
        (GcsOptions(aux_kind="l1"), "--aux-kind"),
        (GcsOptions(lams=(0.25, 1.0)), "contain 0"),
    ],
)
def test_bad_options_are_rejected(opts, message):
    with pytest.raises(NtlabError, match=message):
        opts.check()


def test_gcs_leaves_a_batchnorm_model_exactly_as_trained(tiny_digits):
    """θ_T, BatchNorm buffers included, is the trained model during every measurement: the
    probe of the auxiliary heads and the per-batch gradient passes move no buffer."""
    cfg = TrainConfig(target="optdigits", backbone="resnet18", steps=3, batch_size=8, device="cpu")
    model, data, _, _ = trained_model(cfg, tasks=AUX)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_heads(model, data, AUX, steps=3, batch_size=8, seed=0)
    table, _ = gcs_table(model, data, "optdigits", AUX, GcsOptions(batches=2, batch_size=8))
    after = model.state_dict()
    buffers = [k for k, _ in model.named_buffers()]
    assert any("running_mean" in k for k in buffers) and any("num_batches" in k for k in buffers)
    for k in buffers:
        assert torch.equal(before[k], after[k]), f"{k} moved during gcs"
    backbone = [k for k, _ in model.named_parameters() if k.startswith("backbone.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert (table[table["lam"] == 0.0]["tg"] == 0.0).all()


def test_gcs_library_and_cli_share_one_default_step_size():
    from typer.testing import CliRunner

    from ntlab.cli import app

    assert GcsOptions().eta == 0.01  # the paper's η
    help_text = CliRunner().invoke(app, ["gcs", "--help"], terminal_width=200).output
    assert "0.01" in help_text and "0.05" not in help_text


def test_one_batch_image_se_is_the_paired_se_of_the_two_steps(pretrained):
    """With one batch pair each image's difference is that of two models on the same images,
    so the image part of the SE is McNemar's paired SE (with n − 1 in the variance)."""
    model, data = pretrained
    lam, eta = 1.0, 0.01
    opts = GcsOptions(lams=(0.0, lam), batches=1, eta=eta, batch_size=16, seed=0)
    table, image_se = gcs_table(model, data, "optdigits", AUX, opts)
    # the same two one-step models, rebuilt by hand from the same seeded batches
    head = model.head_index("optdigits")
    aux_heads = [model.head_index(a) for a in AUX]
    source = BatchSource([data["optdigits"]], [head], 16, seeded_generator(0, "gcs:optdigits"))
    aux_source = BatchSource([data[a] for a in AUX], aux_heads, 16, seeded_generator(0, "gcs:aux"))
    params = dict(model.named_parameters())
    names = [n for n in params if n.startswith("backbone.") or n.startswith(f"heads.{head}.")]
    shared = [n for n in names if n.startswith("backbone.")]
    loss = term_losses(model, [source.next()], [[head]])[0][0]
    g_t = dict(zip(names, torch.autograd.grad(loss, [params[n] for n in names])))
    aux_loss = term_losses(model, [aux_source.next()], [aux_heads])[0][0]
    g_a = dict(zip(shared, torch.autograd.grad(aux_loss, [params[n] for n in shared])))
    g_a.update({n: torch.zeros_like(params[n]) for n in names if n not in shared})
    stacked = one_step_params(
        {n: params[n].detach() for n in names}, g_t, g_a, torch.tensor([0.0, lam]), eta
    )
    task = data["optdigits"]
    correct, _ = one_step_outcomes(model, head, stacked, to_float(task.x("val")), task.y("val"))
    tg, se = paired_tg_se(correct[1], correct[0])
    assert se > 0, "the step must change some predictions for the check to mean anything"
    n = correct.shape[1]
    assert table.loc[table["lam"] == lam, "tg"].item() == pytest.approx(tg)
    assert image_se[lam]["tg"] == pytest.approx(se * (n / (n - 1)) ** 0.5)
    # one batch pair: no batch-to-batch spread to add
    assert gcs_summary(table, image_se)["per_lam"]["1"]["mean_tg_se"] == pytest.approx(
        image_se[lam]["tg"]
    )


def test_mean_tg_se_adds_batch_and_image_parts_and_decides_the_verdict():
    import math

    import pandas as pd

    rows = []
    for b, (g, tg) in enumerate([(0.2, 1.0), (-0.1, 1.4), (0.3, 0.6), (0.0, 1.0)]):
        rows += [{"batch": b, "lam": 0.0, "gcs": g, "tg": 0.0, "tg_loss": 0.0},
                 {"batch": b, "lam": 1.0, "gcs": g, "tg": tg, "tg_loss": -tg / 100}]  # fmt: skip
    table = pd.DataFrame(rows)
    batch_se = pd.Series([1.0, 1.4, 0.6, 1.0]).std() / 2  # std / √4
    summary = gcs_summary(table, {1.0: {"tg": 0.3, "tg_loss": 0.001}})
    one = summary["per_lam"]["1"]
    assert one["mean_tg"] == pytest.approx(1.0)
    assert one["mean_tg_se"] == pytest.approx(math.sqrt(batch_se**2 + 0.3**2))
    assert one["effect"] == "helps"  # 1.0 > 2 × 0.36
    assert one["effect_loss"] == "hurts"  # −0.01 < −2 × sqrt(0.0016² + 0.001²)
    assert summary["best_lam"] == 1.0 and summary["best_effect"] == "helps"
    assert summary["tg_se_kind"] == "batch pairs + validation images"
    # a larger image part makes the same mean within noise
    noisy = gcs_summary(table, {1.0: {"tg": 0.6, "tg_loss": 0.01}})["per_lam"]["1"]
    assert noisy["effect"] == "within_noise" and noisy["effect_loss"] == "within_noise"
