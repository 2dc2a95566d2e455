"""Merging branches: the convex combination Σ_b Λ_b θ_b of their states (the paper's Eq. 13),
or one of two operators on the branches' deltas from where they forked.

Floating-point tensors (parameters and float buffers) are combined. Integer buffers, such
as BatchNorm's `num_batches_tracked`, are counters, not estimates: averaging them is
meaningless, so they are taken from the branch with the largest weight.

A branch with weight 0 takes no part in the sum (so 0 · NaN never reaches a merge), and a
merge with all its weight on one branch is a bitwise copy of that branch, whatever the
operator: a corner of the simplex is the branch as trained, so the search's reference (the
target-alone branch) is the same under every operator.

The operators (`MergeOp`), on the deltas τ_b = θ_b − θ_0 from the state θ_0 the branches
forked from (ForkMerge: the last merge; `ternary`: the common start):

- `average`: θ_0 + Σ_b Λ_b τ_b = Σ_b Λ_b θ_b (the paper's merge; the default).
- `ties` (Yadav et al. 2023, TIES-merging): keep each delta's top `k` share of entries by
  magnitude, over all the merged entries of that branch (the rest set to 0); elect each
  entry's sign as the sign of Σ_b Λ_b τ̂_b (the larger total magnitude, weighted); average
  the kept entries that agree with it, weighted by Λ: τ = Σ_{b∈A} Λ_b τ̂_b / Σ_{b∈A} Λ_b
  (A: the branches whose kept entry is non-zero and has the elected sign; 0 where none).
  With k = 1 and one branch it is that branch.
- `dare` (Yu et al. 2024, DARE): drop each delta entry with probability `p` (a generator
  seeded per merge) and scale the survivors by 1/(1 − p), then average as `average`.
  With p = 0 it is `average`, exactly (no draw is made).

Trimming and dropping do not depend on Λ: they are done once per merge, so a search
evaluates every candidate Λ on the same trimmed or dropped deltas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ntlab.catalog import MERGE_OPS
from ntlab.checks import check_number
from ntlab.errors import NtlabError, unknown_name

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


@dataclass(frozen=True)
class MergeOp:
    """How branches are merged (module docstring): `average`, `ties` (keeping the top `k`
    share of each delta's entries) or `dare` (dropping a share `p`, seeded by `seed`)."""

    name: str = "average"
    k: float = 0.2
    p: float = 0.5
    seed: int = 0

    def check(self) -> MergeOp:
        if self.name not in MERGE_OPS:
            raise unknown_name("--merge-op", self.name, MERGE_OPS)
        check_number(
            "--ties-k", self.k, low=0, high=1, low_open=True, why="the share of entries kept"
        )
        check_number(
            "--dare-p", self.p, low=0, high=1, high_open=True, why="the share of entries dropped"
        )
        return self

    @property
    def uses_deltas(self) -> bool:
        return self.name == "ties" or (self.name == "dare" and self.p > 0)

    def describe(self) -> str:
        if self.name == "ties":
            return f"ties (k = {self.k:g})"
        if self.name == "dare":
            return f"dare (p = {self.p:g})"
        return "average"


AVERAGE = MergeOp()


def _top_share_masks(deltas: dict[str, torch.Tensor], k: float) -> dict[str, torch.Tensor]:
    """Per branch, the entries whose |τ_b| is among its top `k` share over all keys."""
    if k >= 1:
        return {key: torch.ones_like(d, dtype=torch.bool) for key, d in deltas.items()}
    branches = next(iter(deltas.values())).shape[0]
    magnitudes = torch.cat([d.abs().reshape(branches, -1) for d in deltas.values()], dim=1)
    n = magnitudes.shape[1]
    keep = max(1, math.ceil(k * n))
    # the keep-th largest magnitude of each branch; entries at it or above are kept
    threshold = magnitudes.kthvalue(n - keep + 1, dim=1).values
    return {key: d.abs() >= threshold.view(-1, *([1] * (d.dim() - 1))) for key, d in deltas.items()}


class MergeSpace:
    """The branches' states, stacked once per merge, so that any Λ is materialised cheaply.

    `load_into(model, Λ)` writes the merge of Λ into an existing model in place: a search
    evaluates many candidates with one model and no new allocations per tensor. `keys`
    limits the merge to some entries of the state (e.g. the backbone and the target head);
    the model's other entries are left as they are. `op` other than `average` needs `base`,
    the state θ_0 the branches forked from.
    """

    def __init__(
        self,
        states: Sequence[StateDict],
        keys: Iterable[str] | None = None,
        op: MergeOp = AVERAGE,
        base: StateDict | None = None,
        draw: str = "merge",
    ) -> None:
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
        self.op = op.check()
        self.base: dict[str, torch.Tensor] = {}
        self.deltas: dict[str, torch.Tensor] = {}
        if op.uses_deltas:
            if base is None:
                raise NtlabError(f"the {op.name} merge needs the state the branches forked from")
            self.base = {k: base[k].detach().to(self.stacked[k]) for k in self.float_keys}
            deltas = {k: self.stacked[k] - self.base[k] for k in self.float_keys}
            if op.name == "ties":
                masks = _top_share_masks(deltas, op.k)
                self.deltas = {k: torch.where(masks[k], d, 0) for k, d in deltas.items()}
            else:  # dare: one seeded draw per merge, on the CPU so any device draws alike
                from ntlab.data.sampler import seeded_generator

                g = seeded_generator(op.seed, f"dare:{draw}")
                for k, d in deltas.items():
                    kept = torch.rand(d.shape, generator=g) >= op.p
                    self.deltas[k] = torch.where(kept.to(d.device), d / (1 - op.p), 0)

    def _terms(self, weights: Sequence[float]) -> tuple[list[int], list[float], int]:
        """The branches that take part (weight > 0), their weights, and the heaviest."""
        weights = check_weights(weights, self.branches)
        used = [b for b, w in enumerate(weights) if w > 0]
        return used, [weights[b] for b in used], max(used, key=lambda b: weights[b])

    def _merged(self, key: str, used: list[int], w: list[float]) -> torch.Tensor:
        stack = self.stacked[key]
        if len(used) == 1:
            return stack[used[0]]  # all weight on one branch: that branch, bit for bit
        weights = torch.tensor(w, dtype=stack.dtype, device=stack.device)
        if not self.op.uses_deltas:
            return torch.tensordot(weights, stack[used], dims=1)
        deltas = self.deltas[key][used]
        if self.op.name == "dare":
            return self.base[key] + torch.tensordot(weights, deltas, dims=1)
        wv = weights.view(-1, *([1] * (deltas.dim() - 1)))
        elected = torch.sign((wv * deltas).sum(0))
        agree = (torch.sign(deltas) == elected) & (deltas != 0)
        total = (wv * agree).sum(0)
        mean = (wv * deltas * agree).sum(0) / total.clamp_min(torch.finfo(total.dtype).tiny)
        return self.base[key] + torch.where(total > 0, mean, 0)

    def combine(self, weights: Sequence[float]) -> StateDict:
        """A new state dict: the merge of Λ (Σ_b Λ_b θ_b for `average`)."""
        used, w, heaviest = self._terms(weights)
        out = {key: self._merged(key, used, w).clone() for key in self.stacked}
        out.update({k: v.clone() for k, v in self.others[heaviest].items()})
        return out

    @torch.no_grad()
    def load_into(self, model: torch.nn.Module, weights: Sequence[float]) -> None:
        """Write the merge of Λ into `model`'s own tensors."""
        used, w, heaviest = self._terms(weights)
        target = model.state_dict()
        for key in self.stacked:
            target[key].copy_(self._merged(key, used, w))
        for key, value in self.others[heaviest].items():
            target[key].copy_(value)


def finite_state(state: StateDict) -> bool:
    """Whether every floating-point tensor of `state` is finite (a diverged branch is not)."""
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def merge_state_dicts(
    states: Sequence[StateDict],
    weights: Sequence[float],
    op: MergeOp = AVERAGE,
    base: StateDict | None = None,
) -> StateDict:
    """The merge of Λ over float tensors (Σ_b Λ_b θ_b for `average`; `ties` and `dare` on
    the deltas from `base`); integer buffers from the heaviest branch."""
    return MergeSpace(states, op=op, base=base).combine(weights)


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
