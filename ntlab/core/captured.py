"""A whole training step as one CUDA graph (`--compile captured`).

An eager step of a small model is bound by kernel launches, not arithmetic: each of a few
hundred kernels costs its launch. Captured, the step (forward, the weighted loss, backward,
the optimiser's update) is replayed with one call. What makes that possible:

- static shapes: every loss term's batch has the same shape every step (single-task
  terms, or mixtures of class-labelled tasks); each step's batch is drawn as usual
  (indices on the CPU, gathered on the device) and copied into the graph's input buffers;
- the data resident on the device (the in-memory benchmarks: digits, scenes, your own
  tensors); image files, decoded per batch, are refused;
- a capturable optimiser: Adam with `capturable=True`, its step counters on the device, and
  each parameter group's learning rate a device tensor that the schedule fills in place
  (`TrainState.apply_schedule`), so the graph reads the current rate;
- a static rule: the weighted sum Σ_k ν_k L_k (stl, ew, fixed, ForkMerge's branches), in
  fp32 or bf16 (fp16's loss scaler checks for infinities on the host).

The graph is captured once per training state, after `WARMUP` eager steps (real steps,
on a side stream, as CUDA graphs require), and replayed for every later step, across
ForkMerge's rounds: a merge writes into the parameters in place. It is captured again only
when the tensors it reads are no longer the state's (a checkpoint loaded, the optimiser's
moments reset), which `signature` detects.
"""

from __future__ import annotations

import threading

import torch

from ntlab.config import CAPTURE_REFUSALS as WHY
from ntlab.data.files import ImageFiles
from ntlab.errors import NtlabError

WARMUP = 3  # eager steps before the capture (CUDA graphs need a warmed-up allocator)
# One capture at a time in the process (CUDA's rule; torch's graph context synchronises the
# device and empties the cache on entry): concurrent ForkMerge branches take turns recording.
CAPTURE_LOCK = threading.Lock()


def refusal(state, sources, static: bool) -> str | None:
    """Why this training cannot be captured, in one phrase (None: it can)."""
    device = next(state.model.parameters()).device
    if device.type != "cuda":
        return WHY["cpu"]
    if not static:
        return "only the static weightings (stl, ew, fixed, ForkMerge) are captured"
    if state.scaler is not None:
        return WHY["fp16"]
    if not isinstance(state.optimizer, torch.optim.Adam):
        return WHY["optimizer"]
    model = state.model
    for src in sources:
        if isinstance(src.x, ImageFiles):
            return WHY["files"]
        if src.parts is not None:
            return "a mixture of tasks whose inputs or targets differ in shape has varying shapes"
        heads = src.head.unique().tolist()
        if len(heads) > 1 and not (
            model._linear_ce and len({model.heads[h].out_features for h in heads}) == 1
        ):  # routed by boolean masks, whose sizes the host must read
            return "a mixture of tasks with different heads is routed by masks of varying size"
    return None


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Adam in capturable form: learning rates as device tensors, step counters on the
    device (the values are unchanged)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        elif group["lr"].device != device:  # e.g. restored from a checkpoint on the CPU
            group["lr"] = group["lr"].to(device)
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and "step" in st and st["step"].device != device:
                st["step"] = st["step"].to(device)


class CapturedStep:
    """One training step of `state` on `terms`' batches, recorded as a CUDA graph."""

    def __init__(self, state, present, per_term: bool, scale: float, rule) -> None:
        self.state, self.present, self.per_term = state, present, per_term
        self.scale, self.rule = scale, rule
        self.inputs: list | None = None  # static copies of one step's batches
        self.losses: torch.Tensor | None = None  # the step's loss per term (static)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.signature: tuple[int, ...] | None = None
        self.eager_steps = 0
        self.captures = 0  # how many times the graph was recorded (1, unless tensors changed)
        self.device = next(state.model.parameters()).device

    def tensors(self) -> tuple[int, ...]:
        """Addresses of everything the graph reads or writes outside its inputs."""
        opt = self.state.optimizer
        ptrs = [p.data_ptr() for p in self.state.model.parameters()]
        ptrs += [b.data_ptr() for b in self.state.model.buffers()]
        for group in opt.param_groups:
            ptrs.append(group["lr"].data_ptr() if isinstance(group["lr"], torch.Tensor) else 0)
            for p in group["params"]:
                ptrs += [v.data_ptr() for v in opt.state.get(p, {}).values()
                         if isinstance(v, torch.Tensor)]  # fmt: skip
        return tuple(ptrs)

    def _body(self) -> None:
        from ntlab.core.train import term_losses

        model, optimizer = self.state.model, self.state.optimizer
        optimizer.zero_grad(set_to_none=True)
        losses, features = term_losses(model, self.inputs, self.present, self.per_term)
        objective = losses if self.scale == 1.0 else [loss * self.scale for loss in losses]
        self.rule.backward(objective, features, 0, self.inputs)
        optimizer.step()
        self.losses.copy_(torch.stack(losses).detach())

    def _load(self, batches) -> None:
        if self.inputs is None:
            self.inputs = [tuple(t.clone() for t in b) for b in batches]
            self.losses = torch.zeros(len(batches), device=self.device)
            return
        for static, batch in zip(self.inputs, batches):
            for s, t in zip(static, batch):
                if s.shape != t.shape:
                    raise NtlabError(
                        f"--compile captured needs batches of one shape, got {tuple(t.shape)} "
                        f"after {tuple(s.shape)}; use --compile default"
                    )
                s.copy_(t, non_blocking=True)

    def step(self, batches) -> torch.Tensor:
        """Take one step on `batches`; its loss per term (a device tensor, overwritten by
        the next step: read it before)."""
        self._load(batches)
        if self.graph is not None and self.signature != self.tensors():
            self.graph, self.eager_steps = None, 0  # a load or reset replaced tensors
        if self.graph is None and self.eager_steps >= WARMUP:
            make_capturable(self.state.optimizer, self.device)
            self.graph = torch.cuda.CUDAGraph()
            self.state.optimizer.zero_grad(set_to_none=True)
            # on the training's own device (cuda:N) and a capture stream of its own
            with CAPTURE_LOCK, torch.cuda.device(self.device):
                stream = torch.cuda.Stream(self.device)
                with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
                    self._body()
            self.signature = self.tensors()
            self.captures += 1
        if self.graph is not None:
            self.graph.replay()
            return self.losses
        make_capturable(self.state.optimizer, self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.eager_steps += 1
        return self.losses
