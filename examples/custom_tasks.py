"""ntlab on your own model and tasks: a classification and a regression task on random
tensors, with your own MLP as the shared backbone.

    python examples/custom_tasks.py [--steps N] [--out DIR]

The target `main` is 3-way classification of 16-d inputs; the auxiliary task `aux` is a
regression on other inputs whose targets share part of the structure of `main`'s classes
(so it can help), and `noise` a regression on unrelated targets (so it can hurt).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import ntlab


def make_tasks(seed: int = 0) -> list[ntlab.Task]:
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(16, 3, generator=g)

    def classification(n: int):
        x = torch.randn(n, 16, generator=g)
        return x, (x @ w_true + 0.5 * torch.randn(n, 3, generator=g)).argmax(1)

    w_noise = torch.randn(16, 1, generator=g)

    def regression(n: int, related: bool):
        """Targets of unit scale: the first class score of `main` (related), or another
        random projection (unrelated)."""
        x = torch.randn(n, 16, generator=g)
        w = w_true[:, :1] if related else w_noise
        return x, (x @ w) / w.norm() + 0.1 * torch.randn(n, 1, generator=g)

    def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
        return F.mse_loss(pred, target).item()

    main = ntlab.Task(
        "main", train=classification(120), val=classification(200), test=classification(400),
        head=nn.Linear(32, 3), loss=F.cross_entropy,
        metrics={"acc": ntlab.metrics.accuracy}, higher_is_better=True,
    )  # fmt: skip
    aux = ntlab.Task(
        "aux", train=regression(1000, True), val=regression(200, True),
        test=regression(200, True), head=lambda features: nn.Linear(features, 1),
        loss=F.mse_loss, metrics={"mse": mse}, higher_is_better=False,
    )  # fmt: skip
    noise = ntlab.Task(
        "noise", train=regression(1000, False), val=regression(200, False),
        test=regression(200, False), head=nn.Linear(32, 1),
        loss=F.mse_loss, metrics={"mse": mse}, higher_is_better=False,
    )  # fmt: skip
    return [main, aux, noise]


def report(name: str, result: ntlab.Result) -> None:
    verdict = ntlab.metrics.effect_label(result.effect)
    print(
        f"{name:10} test acc {result.metrics['test']['acc']:6.2f}  "
        f"TG {result.transfer_gain:+.2f} ± {result.tg_se:.2f} ({verdict})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=None, help="also write a run directory and report")
    args = parser.parse_args()

    # ntlab starts from the weights your modules have: seed their initialisation, or each
    # process starts from different ones and prints different numbers
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    tasks = make_tasks()
    common = {"steps": args.steps, "batch_size": 32, "lr": 1e-3, "seed": 0, "threads": 1}

    ew = ntlab.train(backbone, tasks, target="main", method="ew", **common)
    report("EW", ew)
    fm = ntlab.forkmerge(
        backbone, tasks, target="main", merge_every=args.steps // 3, branches="per-task",
        out=args.out, **common,
    )  # fmt: skip
    report("ForkMerge", fm)
    print(fm.lambdas[["round", "branch", "task_weights", "lambda"]].to_string(index=False))

    table = ntlab.gcs(backbone, tasks, target="main", aux="aux", batches=8, **common)
    mean = table.groupby("lam")[["gcs", "tg"]].mean()
    print("GCS vs one-step TG (mean over 8 batch pairs):")
    print(mean.to_string())


if __name__ == "__main__":
    main()
