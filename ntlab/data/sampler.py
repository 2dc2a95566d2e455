"""Mini-batches: by indexing tensors that already live on the training device, or, for
images kept on disk, decoded ahead by loader workers in the same seeded order."""

from __future__ import annotations

import hashlib

import torch

from ntlab.data.benchmark import TaskData
from ntlab.data.files import ImageFiles, cat_images, normalise
from ntlab.errors import NtlabError


def seeded_generator(seed: int, salt: str) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, salt)."""
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class BatchSource:
    """Shuffled epochs over the union of some tasks' training sets.

    Each sample keeps the index of its task, so a mixed batch can be routed to each
    task's own head. The data tensors are shared between forks; only the position in the
    epoch and the generator are copied, so forking is cheap.
    """

    def __init__(
        self,
        tasks: list[TaskData],
        head_ids: list[int],
        batch_size: int,
        generator: torch.Generator,
        augment: bool = True,
    ) -> None:
        inputs = [t.x("train") for t in tasks]
        targets = [t.y("train") for t in tasks]
        # Tasks whose inputs and targets stack (images and class labels) share one tensor
        # of each; others (a mixture of dense tasks, or of tasks whose inputs differ, e.g.
        # one with views) keep one tensor each, and a batch is ordered task by task.
        same_y = all(y.shape[1:] == targets[0].shape[1:] and y.dtype == targets[0].dtype
                     for y in targets)  # fmt: skip
        same_x = all(
            isinstance(x, ImageFiles) or x.shape[1:] == inputs[0].shape[1:] for x in inputs
        )
        self.x = cat_images(inputs) if len(tasks) > 1 and same_x else inputs[0]
        self.y = torch.cat(targets) if len(tasks) > 1 and same_y and same_x else targets[0]
        self.parts = None if same_y and same_x else targets
        self.xparts = None if same_x else inputs
        self.n = sum(len(y) for y in targets)
        device = self.y.device
        self.offsets = torch.tensor([0] + [len(y) for y in targets], device=device).cumsum(0)
        self.head = torch.cat(
            [
                torch.full((t.size("train"),), h, dtype=torch.long, device=device)
                for t, h in zip(tasks, head_ids)
            ]
        )
        self.batch_size = min(batch_size, self.n)
        self.generator = generator
        self.augment = augment  # image files: training transform (random crop, flip) or eval
        self.salt = generator.initial_seed()
        self.batches_drawn = 0
        self._perm = torch.empty(0, dtype=torch.long)
        self._pos = 0
        self._stream = None  # image files: the loader decoding the coming batches
        self._stream_at = -1
        self.workers: int | None = None  # image files: loader processes (None: --workers)

    def _advance(self) -> torch.Tensor:
        """The positions of the next batch (the only place the order is decided)."""
        if self._pos + self.batch_size > len(self._perm):
            self._perm = torch.randperm(self.n, generator=self.generator).to(self.y.device)
            self._pos = 0
        idx = self._perm[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        self.batches_drawn += 1
        return idx

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if isinstance(self.x, ImageFiles):
            return self._next_decoded()
        idx = self._advance()
        if self.parts is not None:
            return self._mixed(idx)
        return self.x[idx], self.y[idx], self.head[idx]

    def _mixed(self, idx: torch.Tensor):
        """A batch of tasks whose targets do not stack: ordered task by task (the union's
        order), with one target tensor per task."""
        idx = idx.sort().values
        head = self.head[idx]
        bounds = torch.searchsorted(idx, self.offsets).tolist()
        local = [idx[lo:hi] - off for lo, hi, off in zip(bounds, bounds[1:], self.offsets.tolist())]
        ys = tuple(y[i] for y, i in zip(self.parts, local))
        if self.xparts is None:
            return self.x[idx], ys, head
        return tuple(x[i] for x, i in zip(self.xparts, local)), ys, head

    def _requests(self):
        """The coming batch requests, from a copy of this source (the source itself only
        moves when a batch is taken, so forks and checkpoints see the logical position)."""
        ahead = self.fork()
        while True:
            number = ahead.batches_drawn
            yield ahead._advance().cpu(), self.augment, batch_seed(self.salt, number)

    def _next_decoded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for _ in range(100):
            if self._stream is None or self._stream_at != self.batches_drawn:
                pin = self.y.device.type == "cuda"
                self._stream = self.x.loader(self._requests(), pin=pin, workers=self.workers)
                self._stream_at = self.batches_drawn
            request, out = next(self._stream)
            out = self.x.finish(out, self.y.device)  # the device decoder decodes here
            idx = self._advance()
            self._stream_at += 1
            ok = self.x.check(request, out).to(idx.device)
            if len(ok):  # a batch whose every image was skipped is passed over
                keep = idx[ok]
                x = normalise(out.x.to(self.y.device, non_blocking=True))
                return x, self.y[keep], self.head[keep]
        raise NtlabError("100 batches in a row had no readable image; check the image files")

    def release(self) -> None:
        """Stop this source's loader processes (and drop what they decoded ahead); the next
        batch starts them again at the same position."""
        self._stream, self._stream_at = None, -1

    def fork(self) -> BatchSource:
        twin = object.__new__(BatchSource)
        twin.__dict__.update(self.__dict__)
        twin.generator = torch.Generator().set_state(self.generator.get_state())
        twin._stream, twin._stream_at = None, -1
        return twin

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "perm": self._perm.cpu(),
            "pos": self._pos,
            "batches_drawn": self.batches_drawn,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._perm = state["perm"].to(self.y.device)
        self._pos = state["pos"]
        self.batches_drawn = state["batches_drawn"]
        self._stream, self._stream_at = None, -1


def share_workers(sources: list[BatchSource], trainings: int = 1) -> None:
    """Sources that train together split the --workers processes between them (at least one
    each), so that a step of K image-list terms runs about --workers decoders, not K times;
    `trainings` running at once (ForkMerge's concurrent branches) split them too."""
    decoded = [s for s in sources if isinstance(s.x, ImageFiles)]
    for src in decoded:
        total = src.x.workers
        share = max(1, total // (len(decoded) * trainings)) if total else 0
        if src.workers != share:
            src.workers = share
            src.release()


def batch_seed(salt: int, number: int) -> int:
    """The seed of the random crops of a source's `number`-th batch."""
    return (salt * 1_000_003 + number) % 2**63


def aux_share(lam: float) -> float:
    """The auxiliary share of the interpolated training distribution (Eq. 3): λ / (1 + λ)."""
    if lam < 0:
        raise ValueError(f"λ must be ≥ 0, got {lam}")
    return lam / (1.0 + lam)


def interpolated_draw(
    n: int, lam: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3: n draws of T_inter = (1 − Z)·T_tgt + Z·T_aux with Z ~ Bernoulli(λ/(1+λ)).

    Returns (is_aux, rank): whether each draw is auxiliary, and its rank among the draws of
    its own source (0, 1, 2, … in order), so that taking the first ranks of a shuffled pool of
    each source gives the sample without replacement and without per-sample Python.
    """
    is_aux = torch.rand(n, generator=generator) < aux_share(lam)
    aux_rank = torch.cumsum(is_aux.long(), 0) - 1
    tgt_rank = torch.cumsum((~is_aux).long(), 0) - 1
    return is_aux, torch.where(is_aux, aux_rank, tgt_rank)
