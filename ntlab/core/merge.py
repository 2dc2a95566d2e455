"""Merging branches: the convex combination Σ_b Λ_b θ_b of their states (PAPER.md Eq. 13).

Floating-point tensors (parameters and float buffers) are combined. Integer buffers, such
as BatchNorm's `num_batches_tracked`, are counters, not estimates: averaging them is
meaningless, so they are taken from the branch with the largest weight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from ntlab.errors import NtlabError

StateDict = dict[str, torch.Tensor]


def is_mergeable(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def check_weights(weights: Sequence[float], branches: int) -> list[float]:
    """Λ must have one entry per branch, be ≥ 0 and sum to 1."""
    weights = [float(w) for w in weights]
    if len(weights) != branches:
        raise NtlabError(f"{len(weights)} merge weights for {branches} branches")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
        raise NtlabError(f"merge weights must be ≥ 0 and sum to 1, got {weights}")
    return weights


class MergeSpace:
    """The branches' states, stacked once per merge, so that any Λ is materialised cheaply.

    `load_into(model, Λ)` writes Σ_b Λ_b θ_b into an existing model in place: a search
    evaluates many candidates with one model and no new allocations per tensor.
    """

    def __init__(self, states: Sequence[StateDict]) -> None:
        if not states:
            raise NtlabError("nothing to merge: no branches")
        keys = list(states[0])
        for s in states[1:]:
            if list(s) != keys:
                raise NtlabError("branches to merge do not have the same parameters")
        self.branches = len(states)
        self.float_keys = [k for k in keys if is_mergeable(states[0][k])]
        self.other_keys = [k for k in keys if not is_mergeable(states[0][k])]
        self.stacked = {k: torch.stack([s[k].detach() for s in states]) for k in self.float_keys}
        self.others = [{k: s[k].detach() for k in self.other_keys} for s in states]

    def combine(self, weights: Sequence[float]) -> StateDict:
        """A new state dict Σ_b Λ_b θ_b."""
        weights = check_weights(weights, self.branches)
        out: StateDict = {}
        for key, stack in self.stacked.items():
            w = torch.tensor(weights, dtype=stack.dtype, device=stack.device)
            out[key] = torch.tensordot(w, stack, dims=1)
        heaviest = max(range(self.branches), key=lambda b: weights[b])
        out.update({k: v.clone() for k, v in self.others[heaviest].items()})
        return out

    @torch.no_grad()
    def load_into(self, model: torch.nn.Module, weights: Sequence[float]) -> None:
        """Write Σ_b Λ_b θ_b into `model`'s own tensors."""
        weights = check_weights(weights, self.branches)
        target = model.state_dict()
        for key, stack in self.stacked.items():
            w = torch.tensor(weights, dtype=stack.dtype, device=stack.device)
            target[key].copy_(torch.tensordot(w, stack, dims=1))
        heaviest = max(range(self.branches), key=lambda b: weights[b])
        for key, value in self.others[heaviest].items():
            target[key].copy_(value)


def merge_state_dicts(states: Sequence[StateDict], weights: Sequence[float]) -> StateDict:
    """Σ_b Λ_b θ_b over float tensors; integer buffers from the heaviest branch."""
    return MergeSpace(states).combine(weights)


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module, batches: Iterable[torch.Tensor], forward: Callable | None = None
) -> int:
    """Re-estimate every BatchNorm's running statistics on `batches` (exact averages).

    A merged model's averaged statistics do not describe its merged weights; this resets
    them and accumulates fresh ones (momentum None = cumulative average). Returns the
    number of BatchNorm layers updated (0: nothing to do, e.g. the GroupNorm backbone).
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    run = forward or model
    for x in batches:
        run(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)
