"""The one training loop: steps on Σ_k ν_k L_k, one mini-batch per loss term."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ntlab.catalog import BN_BATCHES, LOSS_REDUCTIONS  # noqa: F401  (re-exported)
from ntlab.core.rules import Rule, WeightedSum
from ntlab.core.state import TrainState
from ntlab.data.benchmark import TaskData
from ntlab.data.files import to_float
from ntlab.data.sampler import BatchSource, seeded_generator, share_workers
from ntlab.errors import NonFiniteError, NtlabError
from ntlab.models.multitask import MultiTaskModel
from ntlab.tasks import flat_views


@dataclass(frozen=True)
class LossTerm:
    """A weighted loss on the union of some tasks' training data (one task, or a mixture)."""

    name: str
    tasks: tuple[str, ...]
    weight: float


def active_terms(terms: list[LossTerm]) -> list[LossTerm]:
    """The terms that take part in training: weight 0 means the task is not even loaded."""
    for term in terms:
        if not 0 <= term.weight < math.inf:
            raise NtlabError(
                f"the weight of {term.name} is {term.weight}; weights must be ≥ 0 and finite"
            )
    return [t for t in terms if t.weight > 0]


class NonFiniteLossError(NonFiniteError):
    """A term's loss became NaN or infinite: the training diverged (its weights are lost)."""

    def __init__(self, term: str, value: float, first: int, last: int) -> None:
        self.term, self.first, self.last = term, first, last
        kind = "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
        super().__init__(
            f"loss of {term} became {kind} at or before step {last} (between steps {first} "
            f"and {last}); lower --lr or the task weights"
        )


def check_finite_losses(terms: list[LossTerm], means: list[float], step: int, window: int) -> None:
    """The mean losses of the last `window` steps (up to `step`) must be finite."""
    for term, value in zip(terms, means):
        if not math.isfinite(value):
            raise NonFiniteLossError(term.name, value, step - window + 1, step)


def attach_sources(
    state: TrainState, terms: list[LossTerm], data: dict[str, TaskData], batch_size: int, seed: int
) -> None:
    """Create the batch source of each active term that the state does not have yet.

    Each source's stream depends only on (seed, term name), so the target sees the same
    batches whether it is trained alone or with auxiliary tasks.
    """
    for term in active_terms(terms):
        if term.name in state.sources:
            continue
        tasks = [data[t] for t in term.tasks]
        heads = [state.model.head_index(t) for t in term.tasks]
        state.sources[term.name] = BatchSource(
            tasks, heads, batch_size, seeded_generator(seed, term.name)
        )


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, labels, head index per sample


def batch_inputs(x, views: list[int]) -> torch.Tensor:
    """A batch's inputs as one tensor of backbone samples: the views of a task with several
    (`views`: each of the batch's tasks', in order) flattened ([B, V, C, H, W] → [B·V, C, H,
    W]), and a mixture of tasks whose inputs differ in shape (a tuple, task by task)
    concatenated so."""
    if isinstance(x, tuple):
        return torch.cat([flat_views(part, v) for part, v in zip(x, views)])
    return flat_views(x, max(views))


def term_losses(
    model: MultiTaskModel,
    batches: list[Batch],
    heads: list[list[int]],
    per_term: bool = False,
    amp: bool = True,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One loss per term, and the backbone features they share (concatenated in term order).

    Under the model's precision (`ntlab.core.speed`); `amp=False` computes in fp32 whatever
    it is (the gradient measurements of gcs and affinity).

    Pooled (default): a single backbone pass over all terms' batches concatenated, so a
    BatchNorm backbone normalises the terms' batches together. `per_term`: one backbone pass
    per term, so each term's batch is normalised on its own (the authors' DomainNet code:
    one forward per domain). With a per-sample normalisation (the cnn's GroupNorm) both
    give the same losses. Either way the losses are computed from the one concatenated
    `features` tensor, which gradient-balancing rules differentiate through.
    """
    inputs = [batch_inputs(b[0], [model.specs[i].views for i in h]) for b, h in zip(batches, heads)]
    with model.autocast() if amp else contextlib.nullcontext():
        if per_term and len(batches) > 1:
            features = torch.cat([model.train_features(to_float(x)) for x in inputs])
        else:
            x = to_float(torch.cat(inputs) if len(inputs) > 1 else inputs[0])
            features = model.train_features(x)
        parts = features.split([len(x) for x in inputs])
        losses = [model.routed_loss(f, b[1], b[2], h) for f, b, h in zip(parts, batches, heads)]
    return [loss.float() for loss in losses], features


def train(
    state: TrainState,
    terms: list[LossTerm],
    steps: int,
    rule: Rule | None = None,
    *,
    log_every: int = 50,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    bn_batches: str = "pooled",
    loss_reduction: str = "sum",
    concurrent: int = 1,
) -> TrainState:
    """Take `steps` optimiser steps from `state` (in place) and return it.

    The rule turns each step's per-term losses into gradients (default: Σ_k ν_k L_k with the
    terms' weights; `loss_reduction="mean"` divides the losses the rule sees by the number
    of terms K, as the authors' EW does: (Σ_k ν_k L_k)/K). `bn_batches` is how the backbone
    sees the terms' batches (see `term_losses`). `on_log` gets the mean loss of each term
    over the last `log_every` steps, and, for rules that weigh terms, their mean weight (as
    `<term>:weight`). A mean loss that is not finite stops the training with a
    NonFiniteLossError (checked once per `log_every` steps, where the means are read anyway).
    `concurrent` trainings running at once share the image loader's processes.
    """
    terms = active_terms(terms)
    if not terms:
        raise NtlabError("every task weight is 0: nothing to train")
    missing = [t.name for t in terms if t.name not in state.sources]
    if missing:
        raise RuntimeError(f"no batch source for {missing}; call attach_sources first")
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    sources = [state.sources[t.name] for t in terms]
    present = [[model.head_index(task) for task in t.tasks] for t in terms]
    device = next(model.parameters()).device
    static = rule is None
    rule = rule or WeightedSum(torch.tensor([t.weight for t in terms], device=device))
    if bn_batches not in BN_BATCHES or loss_reduction not in LOSS_REDUCTIONS:
        raise NtlabError(f"unknown bn_batches {bn_batches!r} or loss_reduction {loss_reduction!r}")
    per_term = bn_batches == "per-term"
    scale = 1.0 / len(terms) if loss_reduction == "mean" else 1.0
    captured = None
    if model.compile_mode == "captured":
        from ntlab.core.captured import CapturedStep, refusal

        why = refusal(state, sources, static)
        if why is not None:
            raise NtlabError(f"--compile captured cannot run this training: {why}")
        key = (tuple((t.name, t.weight) for t in terms), per_term, scale)
        if key not in state.captured:
            state.captured[key] = CapturedStep(state, present, per_term, scale, rule)
        captured = state.captured[key]
    running = torch.zeros(len(terms), device=device)
    weight_sum = torch.zeros(len(terms), device=device)
    seen = weighed = 0
    model.train()
    share_workers(sources, concurrent)
    try:
        for i in range(steps):
            batches = [src.next() for src in sources]
            if captured is not None:  # the whole step as one CUDA graph
                step_losses, weights = captured.step(batches), None
            else:
                losses, features = term_losses(model, batches, present, per_term)
                optimizer.zero_grad(set_to_none=True)
                objective = losses if scale == 1.0 else [loss * scale for loss in losses]
                if scaler is not None:  # fp16: scaled losses; the step unscales, skips on inf
                    objective = [scaler.scale(loss) for loss in objective]
                weights = rule.backward(objective, features, state.step, batches)
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                step_losses = torch.stack(losses).detach()
            state.step += 1
            state.apply_schedule()
            running += step_losses
            if weights is not None:
                weight_sum += weights.detach().to(device)
                weighed += 1
            seen += 1
            if state.step % log_every == 0 or i == steps - 1:  # the one host sync per window
                means = (running / seen).tolist()
                check_finite_losses(terms, means, state.step, seen)
                if on_log:
                    logged = {t.name: v for t, v in zip(terms, means)}
                    if not static and weighed == seen:  # every step of the window had weights
                        mean_w = (weight_sum / seen).tolist()
                        logged |= {f"{t.name}:weight": v for t, v in zip(terms, mean_w)}
                    on_log(state.step, logged)
                running.zero_()
                weight_sum.zero_()
                seen = weighed = 0
            if on_step:
                on_step(state.step)
    finally:  # loader processes of image files stop between calls (ForkMerge's idle branches)
        for src in sources:
            src.release()
    return state
