"""Hard parameter sharing: one backbone, one head per task."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ntlab.tasks import TaskSpec, build_head, classification_task


class MultiTaskModel(nn.Module):
    """A shared backbone and one head per task, in the order of `tasks`.

    `tasks` maps each task to its `TaskSpec` (its head, loss and metrics), or to a number of
    classes (a linear head and cross-entropy). `input_shape` is one input's shape (heads
    of dense tasks upsample to it); heads are built in task order after the backbone, so a
    seeded construction gives the same parameters wherever it runs.

    `precision`, `channels_last` and `compile_mode` are set by `ntlab.core.speed.configure`:
    the autocast of `autocast()`, the layout `features` gives its inputs, and whether
    `train_features` runs the backbone compiled.
    """

    precision = "fp32"
    channels_last = False
    compile_mode = "off"

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Mapping[str, TaskSpec | int],
        input_shape: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.task_names = list(tasks)
        self.specs = [
            spec if isinstance(spec, TaskSpec) else classification_task(int(spec))
            for spec in tasks.values()
        ]
        self.heads = nn.ModuleList(build_head(s, backbone, input_shape) for s in self.specs)
        # one stacked matmul routes a mixed batch when every head is the same linear layer
        self._linear_ce = all(
            s.is_classification and s.head is None and s.loss is F.cross_entropy for s in self.specs
        )

    def head_index(self, task: str) -> int:
        return self.task_names.index(task)

    def spec(self, task: str) -> TaskSpec:
        return self.specs[self.head_index(task)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's output, eager (evaluation, and the gradient measurements); a task's
        views are flattened to samples before (`ntlab.tasks.flat_views`)."""
        return self.backbone(self._layout(x))

    def train_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's output in a training step: compiled under a compile mode."""
        if self.compile_mode in ("off", "captured"):  # captured: eager ops in a CUDA graph
            return self.features(x)
        backbone = self.__dict__.get("_compiled")
        if backbone is None:
            from ntlab.core.speed import compiled

            backbone = self.__dict__["_compiled"] = compiled(self.backbone, self.compile_mode)
        return backbone(self._layout(x))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        """The autocast context of the model's precision on its device (none for fp32)."""
        from ntlab.core.speed import autocast

        # a CUDA graph must not capture autocast's cache of cast weights
        cache = self.compile_mode != "captured"
        return autocast(next(self.parameters()).device, self.precision, cache)

    def __getstate__(self) -> dict:
        # a copy (a fork, a pickle) compiles its own wrapper, which reuses the cached graph
        state = super().__getstate__()
        state.pop("_compiled", None)
        return state

    def logits(self, features: torch.Tensor, head: int) -> torch.Tensor:
        """The output of head `head` (logits of a classifier, a dense task's maps)."""
        return self.heads[head](features)

    def routed_loss(
        self, features: torch.Tensor, y, heads: torch.Tensor, present: list[int]
    ) -> torch.Tensor:
        """The mean loss of each sample under its own task's head and loss.

        `y` is one tensor of targets (tasks whose targets stack), or, for a mixture of
        tasks whose targets differ in shape, one tensor per task of `present` with the
        batch ordered task by task (`ntlab.data.sampler.BatchSource` draws it so).
        """
        if len(present) == 1:
            return self.specs[present[0]].loss(self.heads[present[0]](features), y)
        if not self._linear_ce:
            return self._mixed_loss(features, y, heads, present)
        if len({self.heads[h].out_features for h in present}) == 1:
            # One matmul over the stacked heads, then each sample picks its own: no masks.
            weight = torch.cat([self.heads[h].weight for h in present])
            bias = torch.cat([self.heads[h].bias for h in present])
            out = (features @ weight.T + bias).view(len(y), len(present), -1)
            lut = self._head_lut(tuple(present), y.device)
            return F.cross_entropy(out[torch.arange(len(y), device=y.device), lut[heads]], y)
        total = features.new_zeros(())
        for h in present:
            mask = heads == h
            total = total + F.cross_entropy(self.heads[h](features[mask]), y[mask], reduction="sum")
        return total / len(y)

    def _head_lut(self, present: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """head index → its position in `present` (−1 elsewhere), made once per set of
        heads: no host-to-device copy per step (which a captured CUDA graph forbids)."""
        luts = self.__dict__.setdefault("_luts", {})
        key = (present, str(device))
        if key not in luts:
            lut = torch.full((len(self.heads),), -1, dtype=torch.long, device=device)
            lut[torch.tensor(present, device=device)] = torch.arange(len(present), device=device)
            luts[key] = lut
        return luts[key]

    def _mixed_loss(self, features, y, heads: torch.Tensor, present: list[int]) -> torch.Tensor:
        """Σ_h n_h · L_h / n over the tasks h of a mixed batch (L_h: task h's mean loss on
        its n_h samples), so every sample weighs the same whatever its task."""
        n = len(heads)
        if isinstance(y, torch.Tensor):
            parts = [(h, heads == h) for h in present]
            pieces = [(h, features[m], y[m]) for h, m in parts]
        else:  # ordered task by task: contiguous pieces (a task with views: V rows each)
            counts = [
                int(c) * self.specs[h].views
                for h, c in zip(
                    present, (heads[:, None] == torch.tensor(present, device=heads.device)).sum(0)
                )
            ]
            pieces = list(zip(present, features.split(counts), y))
        total = features.new_zeros(())
        for h, f, t in pieces:
            if len(t):
                total = total + self.specs[h].loss(self.heads[h](f), t) * len(t)
        return total / n


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class frozen_batchnorm_statistics:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within the block, BatchNorm layers in train mode normalise with the batch's own
    statistics (as in training) but update none of their buffers: running mean, variance
    and `num_batches_tracked` stay bitwise what they were.

    Measurements that take gradient passes on a trained model θ_T (gcs, Auto-λ's meta
    steps) use it, so that θ_T — buffers included — is exactly the trained model.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = batchnorm_layers(model)
        self.saved: list[bool] = []

    def __enter__(self) -> frozen_batchnorm_statistics:
        self.saved = [m.track_running_stats for m in self.layers]
        for m in self.layers:
            m.track_running_stats = False  # train mode: batch statistics, no buffer update
        return self

    def __exit__(self, *exc) -> None:
        for m, tracked in zip(self.layers, self.saved):
            m.track_running_stats = tracked
