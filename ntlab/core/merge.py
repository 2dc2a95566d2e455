"""Merging branches: the convex combination Σ_b Λ_b θ_b of their states (the paper's Eq. 13).

Floating-point tensors (parameters and float buffers) are combined. Integer buffers, such
as BatchNorm's `num_batches_tracked`, are counters, not estimates: averaging them is
meaningless, so they are taken from the branch with the largest weight.

A branch with weight 0 takes no part in the sum (so 0 · NaN never reaches a merge), and a
merge with all its weight on one branch is a bitwise copy of that branch.
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
    evaluates many candidates with one model and no new allocations per tensor. `keys`
    limits the merge to some entries of the state (e.g. the backbone and the target head);
    the model's other entries are left as they are.
    """

    def __init__(self, states: Sequence[StateDict], keys: Iterable[str] | None = None) -> None:
        if not states:
            raise NtlabError("nothing to merge: no branches")
        names = list(states[0])
        for s in states[1:]:
            if list(s) != names:
                raise NtlabError("branches to merge do not have the same parameters")
        chosen = None if keys is None else set(keys)
        keys = [k for k in names if chosen is None or k in chosen]
        self.branches = len(states)
        self.float_keys = [k for k in keys if is_mergeable(states[0][k])]
        self.other_keys = [k for k in keys if not is_mergeable(states[0][k])]
        self.stacked = {k: torch.stack([s[k].detach() for s in states]) for k in self.float_keys}
        self.others = [{k: s[k].detach() for k in self.other_keys} for s in states]

    def _terms(self, weights: Sequence[float]) -> tuple[list[int], list[float], int]:
        """The branches that take part (weight > 0), their weights, and the heaviest."""
        weights = check_weights(weights, self.branches)
        used = [b for b, w in enumerate(weights) if w > 0]
        return used, [weights[b] for b in used], max(used, key=lambda b: weights[b])

    def _merged(self, stack: torch.Tensor, used: list[int], w: list[float]) -> torch.Tensor:
        if len(used) == 1:
            return stack[used[0]]  # all weight on one branch: that branch, bit for bit
        weights = torch.tensor(w, dtype=stack.dtype, device=stack.device)
        return torch.tensordot(weights, stack[used], dims=1)

    def combine(self, weights: Sequence[float]) -> StateDict:
        """A new state dict Σ_b Λ_b θ_b."""
        used, w, heaviest = self._terms(weights)
        out = {key: self._merged(stack, used, w).clone() for key, stack in self.stacked.items()}
        out.update({k: v.clone() for k, v in self.others[heaviest].items()})
        return out

    @torch.no_grad()
    def load_into(self, model: torch.nn.Module, weights: Sequence[float]) -> None:
        """Write Σ_b Λ_b θ_b into `model`'s own tensors."""
        used, w, heaviest = self._terms(weights)
        target = model.state_dict()
        for key, stack in self.stacked.items():
            target[key].copy_(self._merged(stack, used, w))
        for key, value in self.others[heaviest].items():
            target[key].copy_(value)


def finite_state(state: StateDict) -> bool:
    """Whether every floating-point tensor of `state` is finite (a diverged branch is not)."""
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


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
