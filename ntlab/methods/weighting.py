"""Loss weighting: the step minimises Σ_k w_k L_k with weights that change during training."""

from __future__ import annotations

import torch

from ntlab.core.rules import Rule, RuleContext, shared_params
from ntlab.data.sampler import seeded_generator
from ntlab.methods import register_rule


class UncertaintyWeighting(Rule):
    """UW — Kendall, Gal & Cipolla, CVPR 2018, Eq. 7 in the form LibMTL and most MTL
    benchmarks use: L = Σ_k ½ e^{−s_k} L_k + ½ s_k with s_k = log σ_k², learnt jointly.

    Deviation: s has its own Adam with the model's learning rate (the paper trains it with
    the network's optimiser); s starts at 0 (all weights ½).
    """

    def __init__(self, ctx: RuleContext) -> None:
        self.s = torch.zeros(len(ctx.term_names), device=ctx.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.s], lr=ctx.lr)

    def backward(self, losses, features, step, batches):
        self.optimizer.zero_grad(set_to_none=True)
        weights = 0.5 * torch.exp(-self.s)
        (torch.stack(losses) @ weights + 0.5 * self.s.sum()).backward()
        self.optimizer.step()
        return weights.detach()


class DynamicWeightAverage(Rule):
    """DWA — Liu, Johns & Davison, CVPR 2019 (MTAN), Eq. 7:
    w_k(t) = K exp(r_k(t−1)/T) / Σ_i exp(r_i(t−1)/T), r_k(t−1) = L_k(t−1) / L_k(t−2), T = 2.

    The paper's t is an epoch; here it is a window of `window` steps (default 50) and L_k is
    the mean training loss over a window. The first two windows use w = 1.
    """

    def __init__(self, ctx: RuleContext) -> None:
        self.k = len(ctx.term_names)
        self.window = int(ctx.option("dwa_window", 50))
        self.temperature = float(ctx.option("dwa_temperature", 2.0))
        self.history: list[torch.Tensor] = []  # mean loss of each finished window
        self.running = torch.zeros(self.k, device=ctx.device)
        self.weights = torch.ones(self.k, device=ctx.device)

    @staticmethod
    def weights_from(last: torch.Tensor, before: torch.Tensor, temperature: float) -> torch.Tensor:
        ratio = last / before
        return len(ratio) * torch.softmax(ratio / temperature, dim=0)

    def backward(self, losses, features, step, batches):
        stacked = torch.stack(losses)
        (stacked @ self.weights).backward()
        used = self.weights
        self.running += stacked.detach()
        if (step + 1) % self.window == 0:
            self.history.append(self.running / self.window)
            self.running = torch.zeros_like(self.running)
            if len(self.history) >= 2:
                self.weights = self.weights_from(
                    self.history[-1], self.history[-2], self.temperature
                )
        return used


class GradNorm(Rule):
    """GradNorm — Chen et al., ICML 2018, Eqs. 1–2 (α = 1.5): learnt weights w_k whose
    gradient norms on the last shared layer W, G_k = ‖∇_W w_k L_k‖, are pulled towards
    mean(G) · r_k^α, with r_k the task's relative inverse training rate
    (L_k(t)/L_k(0)) / mean_j (L_j(t)/L_j(0)). After each update Σ_k w_k = K.

    W is the backbone's last weight tensor. Deviation: w has its own Adam with the model's
    learning rate (the paper uses the network's optimiser).
    """

    def __init__(self, ctx: RuleContext) -> None:
        self.k = len(ctx.term_names)
        self.alpha = float(ctx.option("gradnorm_alpha", 1.5))
        self.w = torch.ones(self.k, device=ctx.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.w], lr=ctx.lr)
        self.layer = [p for p in shared_params(ctx.model) if p.dim() > 1][-1]
        self.initial: torch.Tensor | None = None

    @staticmethod
    def balance_loss(
        w: torch.Tensor, norms: torch.Tensor, losses: torch.Tensor, initial: torch.Tensor, alpha
    ) -> torch.Tensor:
        """Σ_k |G_k − mean(G) r_k^α| with G_k = w_k ‖∇_W L_k‖ (Eq. 2; the target is constant)."""
        g = w * norms
        ratio = losses / initial
        target = (g.mean() * (ratio / ratio.mean()) ** alpha).detach()
        return (g - target).abs().sum()

    def backward(self, losses, features, step, batches):
        stacked = torch.stack(losses)
        if self.initial is None:
            self.initial = stacked.detach().clamp_min(1e-12)
        norms = torch.stack(
            [torch.autograd.grad(loss, self.layer, retain_graph=True)[0].norm() for loss in losses]
        )
        weights = self.w.detach().clone()
        (stacked @ weights).backward()
        self.optimizer.zero_grad(set_to_none=True)
        self.balance_loss(self.w, norms, stacked.detach(), self.initial, self.alpha).backward()
        self.optimizer.step()
        with torch.no_grad():
            self.w.clamp_(min=1e-6)
            self.w.mul_(self.k / self.w.sum())
        return weights


class RandomLossWeighting(Rule):
    """RLW — Lin et al., TMLR 2022, Eq. 4: w = softmax(z), z ~ N(0, I) drawn at every step
    (from a generator seeded with the run's seed, so runs repeat)."""

    def __init__(self, ctx: RuleContext) -> None:
        self.k = len(ctx.term_names)
        self.generator = seeded_generator(ctx.seed, "rlw")
        self.device = ctx.device

    def backward(self, losses, features, step, batches):
        z = torch.randn(self.k, generator=self.generator)
        weights = torch.softmax(z, dim=0).to(self.device)
        (torch.stack(losses) @ weights).backward()
        return weights


# one line and paper of each: ntlab.catalog.METHOD_INFO
register_rule("uw")(UncertaintyWeighting)
register_rule("dwa")(DynamicWeightAverage)
register_rule("gradnorm")(GradNorm)
register_rule("rlw")(RandomLossWeighting)
