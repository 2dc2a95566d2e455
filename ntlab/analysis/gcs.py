"""Gradient cosine similarity versus transfer gain of one step (paper Fig. 2, Eqs. 14–15).

From a model θ_T trained on the target alone, for each sampled pair of mini-batches:
GCS(g_tgt, g_aux) on the shared parameters, and for every λ the one-step model
θ_{T+1}(λ) = θ_T − η (g_tgt + λ g_aux) with TG(λ) = P̂(θ_{T+1}(λ)) − P̂(θ_{T+1}(0)).

The one-step models are never built as modules: their parameters are computed as one
stacked tensor per parameter, and each is evaluated with `torch.func.functional_call` on
the validation split, which stays on the device, converted to float once.

The noise of a per-λ mean TG has two sources: which batch pairs were drawn and which images
the validation split holds. Its standard error is sqrt(SE_batches² + SE_images²): the first
is the std of the per-batch TGs over √B, the second the std over the validation images of
each image's mean (over the batches) difference over √n. For a two-way random design this
counts the batch × image interaction twice, so it errs on the safe side. A mean TG helps or
hurts beyond noise when it is beyond twice that SE.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call

from ntlab.catalog import AUX_KINDS  # noqa: F401  (re-exported)
from ntlab.config import GCS_LAMS as DEFAULT_LAMS  # noqa: F401  (re-exported)
from ntlab.config import GcsOptions  # noqa: F401  (re-exported)
from ntlab.core.state import OptimConfig, TrainState
from ntlab.core.train import LossTerm, attach_sources, term_losses, train
from ntlab.data.benchmark import TaskData
from ntlab.data.files import Images, labelled_chunks
from ntlab.data.sampler import BatchSource, seeded_generator
from ntlab.errors import NtlabError
from ntlab.metrics import gain_effect, gradient_cosine
from ntlab.models.multitask import MultiTaskModel, frozen_batchnorm_statistics
from ntlab.tasks import flat_views, per_sample

GCS_SE_KIND = "batch pairs + validation images"


def fit_heads(
    model: MultiTaskModel,
    data: dict[str, TaskData],
    tasks: list[str],
    steps: int,
    batch_size: int,
    seed: int,
    lr: float = 1e-2,
) -> None:
    """Fit the heads of `tasks` on the frozen backbone (a linear probe), with the core's loop.

    An STL model's auxiliary heads are untrained; their gradients on the backbone would say
    more about a random head than about the auxiliary task. The backbone, BatchNorm
    statistics included, is left exactly as trained.
    """
    if steps == 0 or not tasks:
        return
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    try:
        state = TrainState.create(model, OptimConfig("adam", lr), steps)
        terms = [LossTerm(f"probe:{t}", (t,), 1.0) for t in tasks]
        attach_sources(state, terms, data, batch_size, seed)
        with frozen_batchnorm_statistics(model):
            train(state, terms, steps)
    finally:
        for p in frozen:
            p.requires_grad_(True)


def gcs_table(
    model: MultiTaskModel,
    data: dict[str, TaskData],
    target: str,
    aux: list[str],
    opts: GcsOptions,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[pd.DataFrame, dict[float, dict[str, float]] | None]:
    """(one row per (batch, λ): gcs, tg, tg_loss, val_score, val_loss, aux_kind; per λ the
    validation-image part of the standard error of its mean TG: {"tg": …, "tg_loss": …}).

    `tg` is the paper's TG in validation accuracy points (`val_score` is the primary metric:
    accuracy, or the error of a classifier scored by it); `tg_loss` the same comparison in
    validation loss, L̂(θ(0)) − L̂(θ(λ)) (> 0 helps), which resolves effects smaller than one
    validation image.
    """
    opts.check()
    lams = sorted(opts.lams)
    shared = [n for n, _ in model.named_parameters() if n.startswith("backbone.")]
    head = model.head_index(target)
    updated = shared + [n for n, _ in model.named_parameters() if n.startswith(f"heads.{head}.")]
    params = dict(model.named_parameters())
    device = params[shared[0]].device
    target_batches = BatchSource(
        [data[target]], [head], opts.batch_size, seeded_generator(opts.seed, f"gcs:{target}")
    )
    aux_batches = None
    if opts.aux_kind == "task":
        aux_heads = [model.head_index(a) for a in aux]
        aux_batches = BatchSource(
            [data[a] for a in aux],
            aux_heads,
            opts.batch_size,
            seeded_generator(opts.seed, "gcs:aux"),
        )
    x_val, y_val = data[target].x("val"), data[target].y("val")
    spec = data[target].spec
    sign = 1.0 if spec.higher_is_better else -1.0  # TG > 0: the step helped
    lam_t = torch.tensor(lams, device=device)
    zero = lams.index(0.0)
    # per λ and validation image, the sum over batches of its difference from the λ = 0 step
    diff_correct = torch.zeros(len(lams), len(y_val), dtype=torch.float64)
    diff_loss = torch.zeros(len(lams), len(y_val), dtype=torch.float64)
    rows = []
    model.train()  # the gradients of training steps; θ_T's BatchNorm buffers stay as trained
    with frozen_batchnorm_statistics(model):
        for b in range(opts.batches):
            tgt_loss = term_losses(model, [target_batches.next()], [[head]], amp=False)[0][0]
            g_tgt = _grads(model, tgt_loss, updated)
            if aux_batches is not None:
                aux_loss = term_losses(model, [aux_batches.next()], [aux_heads], amp=False)[0][0]
                g_aux = _grads(model, aux_loss, shared)
                g_aux.update({n: torch.zeros_like(params[n]) for n in updated if n not in shared})
            else:  # the regulariser ½‖θ‖²: its gradient is θ itself
                g_aux = {n: params[n].detach() for n in updated}
            cos = gradient_cosine(_flat(g_tgt, shared), _flat(g_aux, shared)).item()
            stacked = one_step_params(
                {n: params[n].detach() for n in updated}, g_tgt, g_aux, lam_t, opts.eta
            )
            if spec.is_classification:
                correct, losses = one_step_outcomes(model, head, stacked, x_val, y_val)
                diff_correct += (correct.double() - correct[zero].double()).cpu()
                diff_loss += (losses[zero].double() - losses.double()).cpu()
                acc = (correct.double().mean(1) * 100).tolist()
                if spec.primary == "error":  # the primary metric, turned below by its direction
                    acc = [100.0 - a for a in acc]
                loss = losses.double().mean(1).tolist()
            else:  # the primary metric in its direction; no per-image parts
                acc, loss = one_step_scores(model, head, spec, stacked, x_val, y_val)
            for i, lam in enumerate(lams):
                rows.append(
                    {
                        "batch": b,
                        "lam": lam,
                        "gcs": cos,
                        "tg": sign * (acc[i] - acc[zero]),
                        "tg_loss": loss[zero] - loss[i],
                        "val_score": acc[i],
                        "val_loss": loss[i],
                        "aux_kind": opts.aux_kind,
                    }
                )
            if on_batch:
                on_batch(b + 1)
    n = len(y_val)
    if not spec.is_classification:  # the SE of a mean TG then comes from the batches alone
        return pd.DataFrame(rows), None
    image_se = {
        lam: {
            "tg": _image_se(diff_correct[i] * 100 / opts.batches, n),
            "tg_loss": _image_se(diff_loss[i] / opts.batches, n),
        }
        for i, lam in enumerate(lams)
    }
    return pd.DataFrame(rows), image_se


def _image_se(per_image: torch.Tensor, n: int) -> float:
    """The standard error of a mean over n validation images from each image's value."""
    return float(per_image.std()) / math.sqrt(n) if n > 1 else 0.0


def one_step_params(
    params: dict[str, torch.Tensor],
    g_tgt: dict[str, torch.Tensor],
    g_aux: dict[str, torch.Tensor],
    lams: torch.Tensor,
    eta: float,
) -> dict[str, torch.Tensor]:
    """θ_{T+1}(λ) = θ_T − η (g_tgt + λ g_aux) for every λ at once: each parameter gets a
    leading dimension of len(lams)."""
    return {
        n: p - eta * (g_tgt[n] + lams.view(-1, *[1] * p.dim()) * g_aux[n])
        for n, p in params.items()
    }


def _grads(model: MultiTaskModel, loss: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    return dict(zip(names, grads))


def _flat(grads: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([grads[n].reshape(-1) for n in names])


@torch.no_grad()
def one_step_outcomes(
    model: MultiTaskModel,
    head: int,
    stacked: dict[str, torch.Tensor],
    x: Images,
    y: torch.Tensor,
    chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(which images each stacked model gets right, bool [models, images]; each image's
    cross-entropy, [models, images]) on (x, y), images skipped as unreadable left out.

    A loop over the models with `functional_call`: on the CPU it measured 3× faster than
    `vmap` over the stack (which turns convolutions into grouped ones).
    """
    was_training = model.training
    model.eval()
    prefix = f"heads.{head}."
    n_models = len(next(iter(stacked.values())))
    models = [_split_params(stacked, prefix, i) for i in range(n_models)]
    correct: list[list[torch.Tensor]] = [[] for _ in range(n_models)]
    losses: list[list[torch.Tensor]] = [[] for _ in range(n_models)]
    for xs, ys in labelled_chunks(x, y, chunk):  # each chunk decoded once for every model
        for i, (backbone, head_params) in enumerate(models):
            features = functional_call(model.backbone, backbone, (xs,))
            out = functional_call(model.heads[head], head_params, (features,))
            correct[i].append(out.argmax(1) == ys)
            losses[i].append(F.cross_entropy(out, ys, reduction="none"))
    model.train(was_training)
    return (
        torch.stack([torch.cat(c) for c in correct]),
        torch.stack([torch.cat(v) for v in losses]),
    )


def _split_params(stacked: dict[str, torch.Tensor], prefix: str, i: int) -> tuple[dict, dict]:
    """Model i of a stack: (backbone parameters, head parameters) for functional_call."""
    backbone = {
        k.removeprefix("backbone."): v[i] for k, v in stacked.items() if k.startswith("backbone.")
    }
    return backbone, {
        k.removeprefix(prefix): v[i] for k, v in stacked.items() if k.startswith(prefix)
    }


@torch.no_grad()
def one_step_scores(
    model: MultiTaskModel, head: int, spec, stacked: dict[str, torch.Tensor], x, y, chunk: int = 256
) -> tuple[list[float], list[float]]:
    """(each stacked model's primary metric, its mean loss) on (x, y): the one-step
    models of a target that is not a classification."""
    was_training = model.training
    model.eval()
    prefix = f"heads.{head}."
    n_models = len(next(iter(stacked.values())))
    meters = [spec.evaluator() for _ in range(n_models)]
    totals = [0.0] * n_models
    for xs, ys in labelled_chunks(x, y, chunk):
        for i in range(n_models):
            backbone, head_params = _split_params(stacked, prefix, i)
            out = functional_call(
                model.heads[head],
                head_params,
                (functional_call(model.backbone, backbone, (flat_views(xs, spec.views),)),),
            )
            meters[i].update(per_sample(out, xs, spec.views), ys)
            totals[i] += float(spec.loss(out, ys)) * len(ys)
    model.train(was_training)
    return [m.compute()[spec.primary] for m in meters], [t / len(y) for t in totals]


def gcs_summary(table: pd.DataFrame, image_se: dict[float, dict[str, float]] | None = None) -> dict:
    """Share of conflicting pairs, per-λ mean TG with its standard error and verdict,
    correlation of GCS with TG, best λ.

    The SE of a mean TG is sqrt(SE_batches² + SE_images²) (module docstring); `image_se` is
    the validation-image part per λ from `gcs_table` (without it, the batch part alone).
    """
    per_batch = table.drop_duplicates("batch")
    per_lam = {}
    for lam, group in table[table["lam"] > 0].groupby("lam"):
        images = (image_se or {}).get(float(lam), {})
        mean_tg, mean_tg_loss = float(group["tg"].mean()), float(group["tg_loss"].mean())
        se = _mean_se(group["tg"], images.get("tg"))
        se_loss = _mean_se(group["tg_loss"], images.get("tg_loss"))
        per_lam[f"{lam:g}"] = {
            "mean_tg": mean_tg,
            "mean_tg_se": se,
            "effect": gain_effect([mean_tg], se),
            "share_tg_positive": float((group["tg"] > 0).mean()),
            "corr_gcs_tg": _corr(group["gcs"], group["tg"]),
            "mean_tg_loss": mean_tg_loss,
            "mean_tg_loss_se": se_loss,
            "effect_loss": gain_effect([mean_tg_loss], se_loss),
            "share_tg_loss_positive": float((group["tg_loss"] > 0).mean()),
            "corr_gcs_tg_loss": _corr(group["gcs"], group["tg_loss"]),
            "share_conflicting_but_helpful": float(
                ((group["gcs"] < 0) & (group["tg_loss"] > 0)).mean()
            ),
            "share_aligned_but_harmful": float(
                ((group["gcs"] > 0) & (group["tg_loss"] < 0)).mean()
            ),
        }
    means = table.groupby("lam")["tg"].mean()
    best = float(means.idxmax())
    chosen = per_lam.get(f"{best:g}", {"mean_tg_se": 0.0, "effect": "within_noise"})  # λ = 0
    return {
        "batches": int(len(per_batch)),
        "share_conflicting": float((per_batch["gcs"] < 0).mean()),
        "mean_gcs": float(per_batch["gcs"].mean()),
        "tg_se_kind": GCS_SE_KIND if image_se is not None else "batch pairs",
        "per_lam": per_lam,
        "best_lam": best,
        "best_mean_tg": float(means.max()),
        "best_mean_tg_se": chosen["mean_tg_se"],
        "best_effect": chosen["effect"],
    }


def _mean_se(per_batch: pd.Series, image_part: float | None) -> float:
    """The SE of the mean over batch pairs: sqrt(SE_batches² + SE_images²) (one batch pair:
    the image part alone, the batch-to-batch spread being unknown)."""
    batches = float(per_batch.std()) / math.sqrt(len(per_batch)) if len(per_batch) > 1 else 0.0
    return math.sqrt(batches**2 + (image_part or 0.0) ** 2)


def _corr(a: pd.Series, b: pd.Series) -> float | None:
    """Pearson correlation, None where either side is constant."""
    if a.std() == 0 or b.std() == 0 or len(a) < 3:
        return None
    return float(a.corr(b))


def check_measured(table: pd.DataFrame, eta: float) -> None:
    """The one-step measurements must be numbers: a step too large for the model gives
    infinite or NaN validation losses, whose TG would be meaningless."""
    values = table[["gcs", "val_loss", "tg_loss"]].to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise NtlabError(
            f"the one-step updates with --eta {eta:g} give non-finite validation losses; "
            "lower --eta (the paper uses 0.01)"
        )
