"""The options of a training, of ForkMerge and of `gcs`, as dataclasses that import
nothing heavy: the command line declares its defaults from these fields (one source of
defaults for the library and the CLI) without importing torch.

`ntlab.core.runner.TrainConfig`, `ntlab.core.forkmerge.ForkMergeOptions` and
`ntlab.analysis.gcs.GcsOptions` are these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ntlab.catalog import AUX_KINDS
from ntlab.checks import check_number, check_seed, check_steps
from ntlab.errors import NtlabError, unknown_name

if TYPE_CHECKING:
    from ntlab.core.state import OptimConfig
    from ntlab.core.train import LossTerm

# λ grids: of `sweep` (and `csd`, `compare`'s grid search), of `gcs`, of `tsne`
SWEEP_LAMS = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0)
GCS_LAMS = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0)
TSNE_LAMS = (0.0, 0.0625, 0.25, 1.0)


def lams_text(lams: tuple[float, ...]) -> str:
    """A λ grid as --lams takes it: `0,0.0625,0.25,1`."""
    return ",".join(f"{lam:g}" for lam in lams)


@dataclass
class TrainConfig:
    """Every option that decides what a training computes."""

    target: str
    method: str = "stl"
    aux: list[str] = field(default_factory=list)
    lam: float = 1.0
    benchmark: str = "digits"
    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    backbone: str = "cnn"
    width: int = 16
    weights: str | None = None
    backbone_lr_scale: float = 1.0
    seed: int = 0
    device: str = "auto"
    eval_every: int = 100
    # Image-list benchmarks (domainnet, imagelist): where the data is and how it is loaded.
    root: str | None = None
    domains: list[str] | None = None
    image_size: int | None = None
    skip_bad_images: bool = False
    workers: int | None = None
    # The authors' choices (their DomainNet equal_weight.py: one forward per domain, the
    # losses divided by the number of domains, the best-validation checkpoint kept).
    threads: int | None = None  # torch's intra-op threads on the CPU (None: torch's default)
    bn_batches: str = "pooled"  # pooled | per-term: how BatchNorm sees the terms' batches
    select: str = "last"  # last | best-val: which iterate is the trained model
    loss_reduction: str = "sum"  # sum: Σ ν_k L_k | mean: (Σ ν_k L_k)/K

    def optim(self) -> OptimConfig:
        from ntlab.core.state import OptimConfig

        return OptimConfig(
            self.optimizer,
            self.lr,
            self.weight_decay,
            schedule=self.schedule,
            backbone_lr_scale=self.backbone_lr_scale,
        )

    def data_options(self) -> dict:
        return {
            "root": self.root,
            "domains": self.domains,
            "image_size": self.image_size,
            "skip_bad_images": self.skip_bad_images,
            "workers": self.workers,
        }

    def terms(self) -> list[LossTerm]:
        from ntlab.methods import get_method

        return get_method(self.method).terms(self.target, self.aux, self.lam)


@dataclass
class ForkMergeOptions:
    merge_every: int
    search: str = "auto"  # grid for two branches, greedy above
    grid_step: float = 0.1
    val_samples: int | None = None
    merge_margin: float = 0.0
    prune: int | None = None
    bn_recalibrate: bool = False
    bn_batches: int = 20
    optimizer_state: str = "keep"  # or "reset": fresh optimiser moments after every merge
    merge_heads: str = "all"  # or "shared": the backbone and the target head only

    def search_for(self, branches: int) -> str:
        if self.search == "auto":
            return "grid" if branches <= 2 else "greedy"
        return self.search


@dataclass(frozen=True)
class GcsOptions:
    lams: tuple[float, ...] = GCS_LAMS
    batches: int = 64
    eta: float = 0.01  # the paper's η; the CLI takes its defaults from these fields
    aux_kind: str = "task"
    batch_size: int = 64
    probe_steps: int = 100
    seed: int = 0

    def check(self) -> None:
        from ntlab.analysis.common import check_lams

        if self.aux_kind not in AUX_KINDS:
            raise unknown_name("--aux-kind", self.aux_kind, AUX_KINDS)
        check_steps("--batches", self.batches)
        check_number("--eta", self.eta, low=0, low_open=True, why="the step size of θ − η·g")
        check_steps("--probe-steps", self.probe_steps, low=0)
        check_number("--batch-size", self.batch_size, low=1, integer=True)
        check_seed("--seed", self.seed)
        check_lams(self.lams)
        if 0.0 not in self.lams:
            raise NtlabError("--lams must contain 0: TG(λ) is measured against the λ = 0 step")
