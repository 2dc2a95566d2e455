"""Auxiliary-task methods: the target (term 0) is the primary task, and the auxiliary tasks'
weights are set for its sake from gradients, validation loss or a schedule."""

from __future__ import annotations

import torch
from torch.func import functional_call

from ntlab.core.rules import (
    Rule,
    RuleContext,
    scale_head_grads,
    set_shared_grad,
    task_jacobian,
)
from ntlab.methods import register_rule
from ntlab.models.multitask import frozen_batchnorm_statistics


def cosines_to_target(jac: torch.Tensor) -> torch.Tensor:
    """cos(g_0, g_k) for every row k of a (K, P) Jacobian (1 for the target itself; 0 where
    a gradient is zero)."""
    norms = jac.norm(dim=1)
    dots = jac @ jac[0]
    return torch.where(norms * norms[0] > 0, dots / (norms * norms[0]).clamp_min(1e-30), 0.0)


class _JacobianRule(Rule):
    """Weights from the per-task gradients on the shared backbone: the update is
    Σ_k w_k g_k there, and each auxiliary head is scaled by its task's weight."""

    scales_heads = True  # False: each head learns from its own loss at weight 1

    def __init__(self, ctx: RuleContext) -> None:
        self.ctx = ctx
        self.k = len(ctx.term_names)

    def weights(self, jac: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError

    def backward(self, losses, features, step, batches):
        jac = task_jacobian(losses, features, self.ctx.model)
        weights = self.weights(jac, step)
        set_shared_grad(self.ctx.model, weights @ jac)
        if self.scales_heads:
            scale_head_grads(self.ctx.model, self.ctx.term_heads, weights)
        return weights


class GradientCosineSimilarity(_JacobianRule):
    """GCS — Du et al., 2018 ("Adapting auxiliary losses using gradient similarity"), Alg. 1,
    unweighted version: an auxiliary gradient is added only when its cosine with the target
    gradient is positive (w_k = 1[cos(g_0, g_k) > 0], w_0 = 1), on the shared parameters.
    Only the shared gradient is gated (as in Du et al. and the ForkMerge authors' baseline):
    an auxiliary head always learns from its own loss."""

    scales_heads = False

    @staticmethod
    def weights_from(jac: torch.Tensor) -> torch.Tensor:
        weights = (cosines_to_target(jac) > 0).to(jac.dtype)
        weights[0] = 1.0
        return weights

    def weights(self, jac, step):
        return self.weights_from(jac)


class OnlineAuxiliary(_JacobianRule):
    """OL-AUX — Lin et al., NeurIPS 2019 ("Adaptive auxiliary task weighting for
    reinforcement learning"), Alg. 1: every N steps (N = 5), w_k ← w_k + β Σ_{last N steps}
    ⟨g_0, g_k⟩, the first-order gain of the auxiliary gradient for the target.

    Deviations: as in the ForkMerge authors' baseline, the inner product is normalised to a
    cosine so that β (0.01) has no units; weights are kept ≥ 0.
    """

    def __init__(self, ctx: RuleContext) -> None:
        super().__init__(ctx)
        self.every = int(ctx.option("ol_aux_every", 5))
        self.beta = float(ctx.option("ol_aux_beta", 0.01))
        self.w = torch.ones(self.k, device=ctx.device)
        self.accumulated = torch.zeros(self.k, device=ctx.device)

    @staticmethod
    def updated(w: torch.Tensor, accumulated: torch.Tensor, beta: float) -> torch.Tensor:
        new = (w + beta * accumulated).clamp_min(0.0)
        new[0] = 1.0
        return new

    def weights(self, jac, step):
        used = self.w.clone()
        self.accumulated += cosines_to_target(jac)
        if (step + 1) % self.every == 0:
            self.w = self.updated(self.w, self.accumulated, self.beta)
            self.accumulated.zero_()
        return used


class AuxiliaryReweighting(_JacobianRule):
    """ARML — Shi et al., NeurIPS 2020 ("Auxiliary task reweighting for minimum-data
    learning"), Eq. 6: auxiliary weights α that minimise ‖g_0 − Σ_{k≥1} α_k g_k‖², kept on
    {α ≥ 0, Σ α = K − 1}; w_0 = 1.

    Deviations: projected gradient descent on that objective (step 0.01), divided by
    ‖g_0‖² so that the step has no units, instead of the paper's Langevin dynamics (no
    injected noise).
    """

    def __init__(self, ctx: RuleContext) -> None:
        super().__init__(ctx)
        self.alpha = torch.ones(self.k - 1, device=ctx.device)
        self.lr = float(ctx.option("arml_lr", 0.01))

    @staticmethod
    def objective_grad(alpha: torch.Tensor, jac: torch.Tensor) -> torch.Tensor:
        """∇_α ‖g_0 − α·G‖² / ‖g_0‖² = −2 G (g_0 − α·G) / ‖g_0‖²."""
        residual = jac[0] - alpha @ jac[1:]
        return -2 * (jac[1:] @ residual) / jac[0].pow(2).sum().clamp_min(1e-30)

    @staticmethod
    def project(alpha: torch.Tensor) -> torch.Tensor:
        """Euclidean projection onto {α ≥ 0, Σ α = n} (n = len(α)), by sorting."""
        n = len(alpha)
        u, _ = torch.sort(alpha, descending=True)
        css = torch.cumsum(u, 0) - n
        idx = torch.arange(1, n + 1, device=alpha.device, dtype=alpha.dtype)
        rho = int(torch.nonzero(u - css / idx > 0).max())
        theta = css[rho] / (rho + 1)
        return (alpha - theta).clamp_min(0.0)

    def weights(self, jac, step):
        used = torch.cat([torch.ones(1, device=jac.device), self.alpha])
        step_ = self.alpha - self.lr * self.objective_grad(self.alpha, jac.detach())
        self.alpha = self.project(step_)
        return used


class AutoLambda(Rule):
    """Auto-λ — Liu, Davison & Johns, TMLR 2022, Eqs. 3–5: task weights λ updated by the
    meta-gradient of the target's validation loss after a virtual SGD step,
    θ' = θ − η ∇_θ Σ_k λ_k L_k(θ), approximated by finite differences:
    ∇_λ L_val(θ') ≈ −η [∇_λ L_train(θ⁺) − ∇_λ L_train(θ⁻)] / 2ε, with
    θ± = θ ± ε ∇_θ' L_val(θ') and ε = 0.01 / ‖∇_θ' L_val(θ')‖. Every λ (the target's too)
    starts at 0.1, as in the official code, and follows Adam.

    The validation batches are the target's validation split (the data ForkMerge's merge
    search also sees). The meta passes leave BatchNorm statistics alone: validation images
    must not move the model's running estimates. Deviations: λ is kept ≥ 0; the meta
    learning rate is 3e-3 instead of the official 1e-4, which is tuned for budgets of
    ~10⁵ steps: Adam moves λ by at most about lr per step, so at 1e-4 a 500-step budget could
    move it by 0.05 and the method would be EW in disguise.
    """

    INITIAL = 0.1
    META_LR = 3e-3

    def __init__(self, ctx: RuleContext) -> None:
        self.ctx = ctx
        k = len(ctx.term_names)
        initial = float(ctx.option("auto_lambda_init", self.INITIAL))
        self.lam = torch.full((k,), initial, device=ctx.device, requires_grad=True)
        lr = float(ctx.option("auto_lambda_lr", self.META_LR))
        self.optimizer = torch.optim.Adam([self.lam], lr=lr)
        self.every = int(ctx.option("auto_lambda_every", 1))
        if ctx.val_batches is None:
            raise ValueError("auto-lambda needs the target's validation batches")
        self.wrapper = _TermLosses(ctx.model)

    def _losses_at(self, params: dict, batches: list) -> torch.Tensor:
        """Each term's loss on `batches` with the model's parameters replaced by `params`."""
        heads = self.ctx.term_heads[: len(batches)]
        named = {f"model.{n}": p for n, p in params.items()}
        return functional_call(self.wrapper, named, (batches, heads))

    def backward(self, losses, features, step, batches):
        model = self.ctx.model
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        weights = self.lam.detach().clone()
        grads = torch.autograd.grad(torch.stack(losses) @ weights, params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        if step % self.every == 0:
            with frozen_batchnorm_statistics(model):
                self._meta_step(names, params, grads, weights, batches)
        return weights

    def _meta_step(self, names, params, grads, weights, batches) -> None:
        lr = self.ctx.current_lr() if self.ctx.current_lr else self.ctx.lr
        with torch.no_grad():
            virtual = {
                n: (p - lr * g).requires_grad_(True) for n, p, g in zip(names, params, grads)
            }
        val = self.ctx.val_batches()
        val_loss = self._losses_at(virtual, [val])[0]
        d = torch.autograd.grad(val_loss, list(virtual.values()), allow_unused=True)
        d = [torch.zeros_like(p) if g is None else g for p, g in zip(params, d)]
        norm = torch.sqrt(sum((g * g).sum() for g in d))
        if not norm > 0:
            return
        eps = 0.01 / norm
        with torch.no_grad():
            plus = {n: p + eps * g for n, p, g in zip(names, params, d)}
            minus = {n: p - eps * g for n, p, g in zip(names, params, d)}
            diff = self._losses_at(plus, batches) - self._losses_at(minus, batches)
        hypergrad = -lr * diff / (2 * eps)
        self.optimizer.zero_grad(set_to_none=True)
        self.lam.grad = hypergrad.to(self.lam.dtype)
        self.optimizer.step()
        with torch.no_grad():
            self.lam.clamp_(min=0.0)


class _TermLosses(torch.nn.Module):
    """The model as a function of its parameters, for `functional_call`: batches → the
    stacked per-term losses (the same code the training loop runs)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, batches, heads):
        from ntlab.core.train import term_losses

        return torch.stack(term_losses(self.model, batches, heads)[0])


class PostTrain(Rule):
    """Post-train — the paper's baseline (Jiang et al., 2023, §5): train on all tasks with
    equal weights, then fine-tune on the target alone. The budget is split: the first
    `share` (½) of the steps are EW, the rest STL, continuing the same optimiser and
    schedule. The auxiliary batches are still drawn (and ignored) in the second phase, so
    both phases see the same target batches as the other methods."""

    def __init__(self, ctx: RuleContext) -> None:
        self.switch = int(round(ctx.steps * float(ctx.option("post_train_share", 0.5))))
        k = len(ctx.term_names)
        self.all = torch.ones(k, device=ctx.device)
        self.target = torch.zeros(k, device=ctx.device)
        self.target[0] = 1.0

    def backward(self, losses, features, step, batches):
        weights = self.all if step < self.switch else self.target
        (torch.stack(losses) @ weights).backward()
        return weights


# one line and paper of each: ntlab.catalog.METHOD_INFO
for _name, _rule in [
    ("gcs", GradientCosineSimilarity),
    ("ol-aux", OnlineAuxiliary),
    ("arml", AuxiliaryReweighting),
    ("auto-lambda", AutoLambda),
    ("post-train", PostTrain),
]:
    register_rule(_name)(_rule)
