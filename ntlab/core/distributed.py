"""ForkMerge's branches on several processes under torchrun (one process per device).

`World.from_env()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); without it
there is no world and nothing here is used. Under torchrun, branch b is trained by rank
b mod N; at each merge every branch's owner broadcasts the branch's parameters and
buffers (one flat tensor per dtype), so every rank holds every branch and runs the same
merge search on the same tensors; rank 0's Λ* is broadcast as well, so all ranks continue
from the same θ* even where two devices would score a candidate differently.

Optimiser moments and batch-stream positions stay with the rank that trains the branch;
they travel to rank 0 only for its checkpoint (`gather_to_root`).

A collective that fails (a peer died: gloo reports a closed connection or a timeout) or a
SIGTERM (torchrun stops the other ranks when one fails) becomes a `DistributedError`: one
line naming the rank, the round and the phase, and how to resume.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ntlab.errors import NtlabError

DEFAULT_TIMEOUT = 600.0  # seconds a rank waits at a collective for the others
RESUME_HINT = "rerun with --resume to continue from the last checkpoint"


class DistributedError(NtlabError):
    """A rank stopped responding, or this one was stopped: the run cannot go on (exit 1)."""

    exit_code = 1


class PeerFailed(NtlabError):
    """Another rank (rank 0) reported an error and says it: this rank exits quietly."""

    exit_code = 2
    quiet = True


def torchrun_env() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


@dataclass
class World:
    rank: int
    size: int
    local_rank: int
    device: torch.device
    timeout: float = DEFAULT_TIMEOUT
    phase: str = "the start"
    _previous_sigterm: Any = field(default=None, repr=False)

    # --- set up and tear down ------------------------------------------------------------

    @classmethod
    def from_env(cls, device: str, timeout: float = DEFAULT_TIMEOUT) -> World | None:
        """The process group of a torchrun launch, or None outside torchrun.

        `device` is the --device asked for: CUDA (cuda, cuda:N or auto with a GPU) puts
        each rank on cuda:LOCAL_RANK with NCCL; otherwise every rank uses the CPU and gloo.
        """
        if not torchrun_env():
            return None
        import torch.distributed as dist

        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ["LOCAL_RANK"])
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            if local >= torch.cuda.device_count():
                raise NtlabError(
                    f"rank {rank} has local rank {local} but this host has "
                    f"{torch.cuda.device_count()} CUDA devices; start at most that many "
                    "processes per host (--nproc-per-node)"
                )
            where = torch.device("cuda", local)
            torch.cuda.set_device(where)
        else:
            where = torch.device("cpu")
        world = cls(rank, size, local, where, timeout)
        world._previous_sigterm = signal.signal(signal.SIGTERM, world._on_sigterm)
        try:
            dist.init_process_group(
                backend="nccl" if cuda else "gloo",
                rank=rank,
                world_size=size,
                timeout=datetime.timedelta(seconds=timeout),
                **({"device_id": where} if cuda else {}),
            )
        except (RuntimeError, ValueError) as exc:
            world.close()
            raise DistributedError(
                f"rank {rank} of {size} could not join the others within {timeout:g} s "
                f"({_first_line(exc)}); check --rdzv-endpoint / MASTER_ADDR and MASTER_PORT"
            ) from None
        return world

    def close(self) -> None:
        import torch.distributed as dist

        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - a broken group: nothing left to release
                pass

    def _on_sigterm(self, signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one message, even if sent twice
        raise DistributedError(
            f"rank {self.rank} of {self.size} was stopped (SIGTERM; torchrun stops every rank "
            f"when one fails) during {self.phase}; {RESUME_HINT}"
        )

    # --- ownership -------------------------------------------------------------------------

    def owner(self, branch: int) -> int:
        return branch % self.size

    def owns(self, branch: int) -> bool:
        return self.owner(branch) == self.rank

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # --- collectives, each failure one line --------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except DistributedError:
            raise
        except RuntimeError as exc:  # DistBackendError and gloo's errors are RuntimeErrors
            others = f"rank {1 - self.rank}" if self.size == 2 else "another rank"
            raise DistributedError(
                f"{others} of {self.size} stopped responding during {self.phase} "
                f"(seen by rank {self.rank}: {_first_line(exc)}); {RESUME_HINT}"
            ) from None

    def barrier(self) -> None:
        import torch.distributed as dist

        self._call(dist.barrier)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        import torch.distributed as dist

        box = [obj if self.rank == src else None]
        self._call(lambda: dist.broadcast_object_list(box, src=src, device=self._object_device))
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        self._call(lambda: dist.all_gather_object(out, obj))
        return out

    def gather_to_root(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (rank order); None elsewhere."""
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.size if self.is_root else None
        self._call(lambda: dist.gather_object(obj, out, dst=0))
        return out

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    def root_decides(self, fn: Callable[[], Any], share: bool = True) -> Any:
        """Run `fn` on rank 0 and give its value to every rank (`share=False`: rank 0 keeps
        it, the others get None; only the outcome is told). An NtlabError there is raised on
        rank 0 as it is; the other ranks raise PeerFailed (rank 0 says why)."""
        value, error = None, None
        if self.is_root:
            try:
                value = fn()
            except NtlabError as exc:
                error = exc
            told = ("error", str(error)) if error is not None else ("ok", value if share else None)
        shared = self.broadcast_object(told if self.is_root else None)
        if error is not None:
            raise error
        if shared[0] == "error":
            raise PeerFailed(shared[1])
        return value if self.is_root else shared[1]

    def broadcast_state(self, state: dict[str, torch.Tensor], src: int) -> None:
        """`state`'s tensors (a state dict of this rank's copy) overwritten in place with
        rank `src`'s: one flat tensor per dtype, so a model costs one or two broadcasts."""
        import torch.distributed as dist

        for tensors in _by_dtype(state.values()):
            if self.rank == src:
                flat = torch.cat([t.detach().reshape(-1) for t in tensors])
            else:
                flat = torch.empty(
                    sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=self.device
                )
            flat = flat.to(self.device)
            self._call(lambda flat=flat: dist.broadcast(flat, src=src))
            if self.rank != src:
                with torch.no_grad():
                    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
                        t.copy_(part.view_as(t))


def _by_dtype(tensors) -> list[list[torch.Tensor]]:
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return [groups[d] for d in sorted(groups, key=str)]


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor inside it (dicts, lists, tuples) moved to the CPU, so that it
    can be pickled to a rank on another device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def _first_line(exc: BaseException) -> str:
    """gloo's or NCCL's reason, short: `Connection closed by peer [127.0.0.1]:3209`."""
    text = str(exc).strip().splitlines()
    line = re.sub(r"^\[[^\]]*\] ", "", text[0]) if text else type(exc).__name__
    return line.split(". ")[0][:160]
