"""Gradient balancing: the per-task gradients on the shared backbone (one Jacobian row per
task) are aggregated into one update by TorchJD's aggregators; each head is trained by its
own task's gradient.

We use TorchJD (`torchjd[full]`) rather than re-implementing the aggregators: its
`mtl_backward` computes the Jacobian of the task losses with respect to the shared
parameters through the shared features, and `jac_to_grad` aggregates it into `.grad`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ntlab.core.rules import Rule, RuleContext, shared_params
from ntlab.methods import register_rule


class Aggregated(Rule):
    """Any TorchJD aggregator as a rule. Returns the weights of the Jacobian's rows where the
    aggregator is a weighting of them (all of ours but PCGrad and GradVac, which TorchJD
    also expresses as weights)."""

    def __init__(self, ctx: RuleContext, aggregator) -> None:
        self.aggregator = aggregator
        self.shared = shared_params(ctx.model)

    def backward(self, losses, features, step, batches):
        from torchjd.autojac import jac_to_grad, mtl_backward

        mtl_backward(losses, features=features, shared_params=self.shared)
        with warnings.catch_warnings():  # Nash-MTL's cvxpy problem warns it is not DPP
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            weights = jac_to_grad(self.shared, self.aggregator)
        return weights.detach() if isinstance(weights, torch.Tensor) else None


def _aggregated(make: Callable[[RuleContext], object]) -> Callable[[RuleContext], Rule]:
    def factory(ctx: RuleContext) -> Rule:
        return Aggregated(ctx, make(ctx))

    factory.__doc__ = make.__doc__  # the method's paper and equation
    return factory


def _mgda(ctx):
    """MGDA — Sener & Koltun, NeurIPS 2018 (MGDA-UB's min-norm point of the gradients'
    convex hull; here on the shared parameters' gradients, not the representation's)."""
    from torchjd.aggregation import MGDA

    return MGDA()


def _pcgrad(ctx):
    """PCGrad — Yu et al., NeurIPS 2020, Alg. 1: project each gradient off the others it
    conflicts with, then sum."""
    from torchjd.aggregation import PCGrad

    return PCGrad()


def _imtl(ctx):
    """IMTL-G — Liu et al., ICLR 2021, Eq. 8 (the gradient half of IMTL: the update has
    equal projections onto every task gradient). Deviation: IMTL-L's loss scaling is left
    out, as TorchJD provides IMTL-G."""
    from torchjd.aggregation import IMTLG

    return IMTLG()


def _cagrad(ctx):
    """CAGrad — Liu et al., NeurIPS 2021, Eq. 4, with c = 0.4 (the paper's default)."""
    from torchjd.aggregation import CAGrad

    return CAGrad(c=float(ctx.option("cagrad_c", 0.4)))


def _nashmtl(ctx):
    """Nash-MTL — Navon et al., ICML 2022, Eq. 5 (the bargaining solution), weights updated
    every step, update norm capped at 1 (TorchJD's defaults)."""
    from torchjd.aggregation import NashMTL

    return NashMTL(n_tasks=len(ctx.term_names))


def _gradvac(ctx):
    """GradVac — Wang et al., ICLR 2021, Alg. 1 with β = 0.5 (EMA of the target cosines)."""
    from torchjd.aggregation import GradVac

    return GradVac(beta=float(ctx.option("gradvac_beta", 0.5)))


def _upgrad(ctx):
    """UPGrad — Quinton & Rey, 2024 (TorchJD): project every gradient onto the dual cone of
    all of them and average, so that no task's loss increases to first order."""
    from torchjd.aggregation import UPGrad

    return UPGrad()


def _aligned(ctx):
    """Aligned-MTL — Senushkin et al., CVPR 2023, Alg. 1: align the gradients' principal
    components (condition number 1), scaled by the smallest singular value."""
    from torchjd.aggregation import AlignedMTL

    return AlignedMTL()


# one line and paper of each: ntlab.catalog.METHOD_INFO
for _name, _make in [
    ("mgda", _mgda),
    ("pcgrad", _pcgrad),
    ("imtl", _imtl),
    ("cagrad", _cagrad),
    ("nashmtl", _nashmtl),
    ("gradvac", _gradvac),
    ("upgrad", _upgrad),
    ("aligned-mtl", _aligned),
]:
    register_rule(_name)(_aggregated(_make))
