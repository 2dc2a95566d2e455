"""Images kept on disk and decoded on demand: the data path of the image-list benchmarks.

`ImageFiles` stands where the in-memory benchmarks hold a uint8 tensor: it can be indexed
with a tensor of positions (a lazy subset), concatenated, and loaded. Loading goes through
a `torch.utils.data.DataLoader` whose every item is a whole batch request
(positions, augment?, seed): workers read and decode the JPEGs with torchvision's decoder,
apply the paper's transforms and return uint8 crops; the training process pins them,
moves them to the device and normalises there (ImageNet mean and std).

Every random choice of a training crop comes from a generator seeded by the request, so
the same batch gets the same crops whichever worker decodes it and however many workers
there are.

Transforms (paper App. C.3, as in the Transfer-Learning-Library the authors build on):
train: resize to 256×256 → random-resized crop 224 (scale 0.08–1, ratio 3/4–4/3) → flip;
eval: resize to 256×256 → centre crop 224. `size` scales both (resize = size·256/224).

With `decoder="device"` (`--decode gpu`) the workers only read the files' bytes and draw
each crop's box and flip (the same draws, in the same order); the training process decodes
the batch on its device (nvJPEG on CUDA: `torchvision.io.decode_jpeg(..., device=)`) and
applies the same transforms there. Files that are not JPEGs are decoded on the CPU.
"""

from __future__ import annotations

import math
import os
import re
import sys
import warnings
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ntlab.errors import NtlabError

# torchvision 0.29 marks its image decoders deprecated in favour of TorchCodec; they are the
# decoders of the torchvision this project pins, and they work: the notice is not for users.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
FILE_CHUNK = 64  # images per eval request: spread over the workers, bounded in memory
EVAL_CACHE_ENV = "NTLAB_EVAL_CACHE_MB"  # decoded eval crops kept in memory (default 1024 MB)
_eval_cache_bytes = 0  # held by every ImageFiles of this process together


def default_workers() -> int:
    """Loader processes: all cores but one, at most 8 (0 = decode in the training process)."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


@dataclass
class SkipLog:
    """Images that failed to decode, shared by every subset of one benchmark's files.

    With `skip` the run goes on without them (each is reported once on stderr and counted
    in the results); without it the first one fails the run with its path.
    """

    skip: bool = False
    bad: dict[str, str] = field(default_factory=dict)  # "path (list:line)" → reason

    def record(self, where: str, reason: str) -> None:
        if not self.skip:
            raise NtlabError(
                f"cannot read image {where}: {reason}; fix or remove it, "
                "or pass --skip-bad-images to leave it out"
            )
        if where not in self.bad:
            self.bad[where] = reason
            print(f"warning: skipping unreadable image {where}: {reason}", file=sys.stderr)

    def summary(self) -> dict:
        return {"skipped_images": len(self.bad), "skipped_examples": sorted(self.bad)[:10]}


class ImageFiles:
    """Image files under `root`, each with the list file and line that named it."""

    def __init__(
        self,
        root: Path,
        paths: np.ndarray,
        lists: tuple[str, ...],
        list_id: np.ndarray,
        lines: np.ndarray,
        size: int = DEFAULT_SIZE,
        workers: int = 0,
        log: SkipLog | None = None,
        decoder: str = "workers",
    ) -> None:
        self.root = Path(root)
        self.paths = paths  # object array of paths relative to root
        self.lists, self.list_id, self.lines = lists, list_id, lines
        self.size = size
        self.workers = workers
        self.log = log if log is not None else SkipLog()
        self.decoder = decoder  # workers: decoded by the loader | device: by the training device
        self._eval_cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.size, self.size)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # where positions into the files live

    def __getitem__(self, index: torch.Tensor | slice) -> ImageFiles:
        """The lazy subset at `index` (a tensor of positions, or a slice)."""
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        pick = np.asarray(index.cpu(), dtype=np.int64)
        return ImageFiles(
            self.root, self.paths[pick], self.lists, self.list_id[pick], self.lines[pick],
            self.size, self.workers, self.log, self.decoder,
        )  # fmt: skip

    @staticmethod
    def cat(parts: list[ImageFiles]) -> ImageFiles:
        first = parts[0]
        lists = tuple(dict.fromkeys(name for p in parts for name in p.lists))
        remap = [np.array([lists.index(n) for n in p.lists], dtype=np.int32) for p in parts]
        return ImageFiles(
            first.root,
            np.concatenate([p.paths for p in parts]),
            lists,
            np.concatenate([r[p.list_id] for r, p in zip(remap, parts)]),
            np.concatenate([p.lines for p in parts]),
            first.size, first.workers, first.log, first.decoder,
        )  # fmt: skip

    def where(self, i: int) -> str:
        return f"{self.root / self.paths[i]} ({self.lists[self.list_id[i]]}:{self.lines[i]})"

    # --- decoding ---------------------------------------------------------------------

    @property
    def resize(self) -> int:
        return round(self.size * 256 / 224)

    def decode(self, index: torch.Tensor, augment: bool, seed: int) -> Decoded:
        """Read, decode and transform the images at `index` (in this process); with the
        device decoder, read the bytes and draw the crops only (`finish` decodes)."""
        if self.decoder == "device":
            return self._read(index, augment, seed)
        gen = torch.Generator().manual_seed(seed)
        resize = self.resize
        images, ok, bad = [], [], []
        for pos, i in enumerate(index.tolist()):
            try:
                images.append(
                    _transform(self.root / self.paths[i], self.size, resize, augment, gen)
                )
                ok.append(pos)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported by path
                bad.append((pos, _reason(exc)))
        x = (
            torch.stack(images)
            if images
            else torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        )
        return Decoded(x, torch.tensor(ok, dtype=torch.long), bad)

    def _read(self, index: torch.Tensor, augment: bool, seed: int) -> Decoded:
        """The files' bytes and each image's crop box and flip, drawn as `_transform` draws
        them (a file that cannot be read is bad here; one that cannot be decoded, later)."""
        gen = torch.Generator().manual_seed(seed)
        raw, crops, ok, bad = [], [], [], []
        for pos, i in enumerate(index.tolist()):
            try:
                data = (self.root / self.paths[i]).read_bytes()
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported by path
                bad.append((pos, _reason(exc)))
                continue
            raw.append(data)
            ok.append(pos)
            if augment:
                box = crop_box(self.resize, self.resize, gen)
                crops.append((*box, bool(torch.rand((), generator=gen) < 0.5)))
        empty = torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
        positions = torch.tensor(ok, dtype=torch.long)
        joined = torch.frombuffer(bytearray(b"".join(raw)), dtype=torch.uint8)
        encoded = Encoded(joined, [len(r) for r in raw], crops if augment else None)
        return Decoded(empty, positions, bad, encoded)

    def finish(self, out: Decoded, device: torch.device) -> Decoded:
        """`out` with its images decoded and transformed on `device` (the device decoder's
        second half; anything else is returned as it is)."""
        if out.encoded is None:
            return out
        x, decoded, bad = decode_on(out.encoded, self.size, self.resize, device)
        keep = torch.tensor(decoded, dtype=torch.long)
        failed = [(int(out.ok[j]), reason) for j, reason in bad]
        return Decoded(x, out.ok[keep] if len(keep) else keep, sorted(out.bad + failed))

    def loader(
        self,
        requests: Iterable[tuple[torch.Tensor, bool, int]],
        pin: bool,
        workers: int | None = None,
    ) -> Iterator:
        """(request, Decoded) for each request, decoded ahead by `workers` processes
        (default: this benchmark's --workers)."""
        workers = self.workers if workers is None else workers
        from torch.utils.data import DataLoader

        return iter(
            DataLoader(
                _Requests(self),
                sampler=_Passthrough(requests),
                batch_size=None,
                num_workers=workers,
                pin_memory=pin,
                prefetch_factor=2 if workers else None,
                worker_init_fn=_worker_init,
            )
        )

    def check(self, request: tuple[torch.Tensor, bool, int], out: Decoded) -> torch.Tensor:
        """Record the request's unreadable images (or fail); the positions that decoded."""
        for pos, reason in out.bad:
            self.log.record(self.where(int(request[0][pos])), reason)
        return out.ok

    def eval_chunks(
        self, chunk: int, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(normalised images on `device`, their positions) for every image, in order, with
        the eval transform. Decoded crops are kept for the next pass while all kept crops of
        the process fit in NTLAB_EVAL_CACHE_MB (the merge search scores the same validation
        split for every candidate): in host memory, or, with the device decoder, on the
        device that decoded them."""
        global _eval_cache_bytes
        if self._eval_cache is not None:
            for x, ok in self._eval_cache:
                yield normalise(x.to(device, non_blocking=True)), ok  # a no-op move, as a rule
            return
        budget = float(os.environ.get(EVAL_CACHE_ENV, "1024")) * 2**20
        size = len(self) * 3 * self.size**2
        keep = _eval_cache_bytes + size <= budget
        cache = []
        requests = [
            (torch.arange(s, min(s + chunk, len(self))), False, 0)
            for s in range(0, len(self), chunk)
        ]
        for request, out in self.loader(requests, pin=device.type == "cuda"):
            out = self.finish(out, device)
            ok = request[0][self.check(request, out)]
            x = out.x.to(device, non_blocking=True)
            if keep:  # on the device only where it decodes: else in host memory, as it came
                cache.append((x if self.decoder == "device" else out.x, ok))
            yield normalise(x), ok
        if keep:
            self._eval_cache = cache
            _eval_cache_bytes += size
            weakref.finalize(self, _release_eval_cache, size)


def _release_eval_cache(size: int) -> None:
    global _eval_cache_bytes
    _eval_cache_bytes -= size


@dataclass
class Encoded:
    """What the device decoder's workers send: the bytes of the readable files, end to end
    in one tensor (one shared-memory block per batch), and, for a training request, each
    one's crop (top, left, height, width, flip)."""

    data: torch.Tensor  # uint8: the files' contents, one after the other
    sizes: list[int]  # bytes of each file
    crops: list[tuple[int, int, int, int, bool]] | None  # None: the eval transform

    @property
    def raw(self) -> list[torch.Tensor]:
        """Each file's bytes (views of `data`)."""
        return list(self.data.split(self.sizes)) if self.sizes else []


@dataclass
class Decoded:
    x: torch.Tensor  # uint8 [n_ok, 3, size, size]
    ok: torch.Tensor  # positions in the request that decoded
    bad: list[tuple[int, str]]
    encoded: Encoded | None = None  # the device decoder: not decoded yet (`finish`)


def decode_on(
    encoded: Encoded, size: int, resize: int, device: torch.device
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """(uint8 crops on `device`, the positions in `encoded.raw` that decoded, the others
    with their reason): JPEGs decoded together on `device`, other formats (and JPEGs the
    device's decoder refuses) on the CPU; then per image the transforms of `_transform` (a
    loop of a few device kernels per image: the images differ in size until resized)."""
    if device.type != "cuda":
        return _decode_on(encoded, size, resize, device)
    # nvJPEG writes its output on a stream of its own that does not wait for the training's:
    # decode on a side stream that waits for it, so no output lands in memory that the
    # previous step's kernels still read; the training's stream then waits for the decode
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        x, done, bad = _decode_on(encoded, size, resize, device)
    current.wait_stream(side)
    x.record_stream(current)
    return x, done, bad


def _decode_on(
    encoded: Encoded, size: int, resize: int, device: torch.device
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    images: dict[int, torch.Tensor] = {}
    bad: list[tuple[int, str]] = []
    raw = encoded.raw
    jpegs = [j for j, data in enumerate(raw) if data[:2].tolist() == [0xFF, 0xD8]]
    if jpegs:
        try:
            batch = decode_jpeg([raw[j] for j in jpegs], mode=ImageReadMode.RGB, device=device)
            images.update(zip(jpegs, batch))
        except Exception:  # noqa: BLE001 - one file fails the batch: the others alone
            for j in jpegs:
                try:
                    images[j] = decode_jpeg(raw[j], mode=ImageReadMode.RGB, device=device)
                except Exception:  # noqa: BLE001 - e.g. a CMYK JPEG nvJPEG refuses: the CPU's turn
                    pass
    for j in range(len(raw)):
        if j in images:
            continue
        try:  # other formats, and JPEGs the device's decoder refused
            images[j] = decode_image(raw[j], mode=ImageReadMode.RGB).to(device)
        except Exception as exc:  # noqa: BLE001
            bad.append((j, _reason(exc)))
    done = sorted(images)
    crops = []
    for j in done:
        img = TF.resize(images[j], [resize, resize], antialias=True)
        if encoded.crops is None:
            crops.append(TF.center_crop(img, [size, size]))
            continue
        top, left, h, w, flip = encoded.crops[j]
        img = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        crops.append(img.flip(-1) if flip else img)
    x = torch.stack(crops) if crops else torch.empty(0, 3, size, size, dtype=torch.uint8)
    return x.to(device), done, sorted(bad)


class _Requests(torch.utils.data.Dataset):
    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def __getitem__(self, request):
        index, augment, seed = request
        return request, self.files.decode(index, augment, seed)

    def __len__(self) -> int:  # pragma: no cover - the sampler decides the length
        return len(self.files)


class _Passthrough(torch.utils.data.Sampler):
    def __init__(self, requests: Iterable) -> None:
        self.requests = requests

    def __iter__(self):
        return iter(self.requests)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _reason(exc: Exception) -> str:
    """One short line: torchvision's source location and advice are cut."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^.*?\.cpp:\d+,\s*", "", lines[0] if lines else type(exc).__name__)
    return text.split(". ")[0].rstrip(".")[:160]


def _transform(
    path: Path, size: int, resize: int, augment: bool, gen: torch.Generator
) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as TF

    if not path.is_file():
        raise FileNotFoundError(path)
    img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    img = TF.resize(img, [resize, resize], antialias=True)
    if not augment:
        return TF.center_crop(img, [size, size])
    top, left, h, w = crop_box(resize, resize, gen)
    img = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
    if torch.rand((), generator=gen) < 0.5:
        img = img.flip(-1)
    return img


def crop_box(
    height: int,
    width: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w), drawn from `gen`: torchvision's rule."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=gen).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    return 0, 0, height, width  # a square image: the whole of it fits every ratio bound


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 crops → float, ImageNet mean and std (on x's device)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return x.float().div_(255).sub_(mean).div_(std)


# --- one interface over in-memory tensors and files ---------------------------------------

Images = torch.Tensor | ImageFiles


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] → float in [-1, 1]; float images (already normalised by their
    loader) pass through."""
    if x.is_floating_point():
        return x
    return x.float().mul_(2 / 255).sub_(1)


def image_size(x: Images) -> int:
    return int(x.shape[-1])


def cat_images(parts: list[Images]) -> Images:
    if isinstance(parts[0], ImageFiles):
        return ImageFiles.cat(parts)
    return torch.cat(parts)


def labelled_chunks(
    x: Images, y: torch.Tensor, chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float images, labels) on y's device, in order, `chunk` at a time (files: at most
    FILE_CHUNK, so that every worker decodes a part); unreadable images skipped under
    --skip-bad-images are left out with their labels."""
    if isinstance(x, ImageFiles):
        for images, ok in x.eval_chunks(min(chunk, FILE_CHUNK), y.device):
            yield images, y[ok.to(y.device)]
        return
    for part, labels in zip(x.split(chunk), y.split(chunk)):
        yield to_float(part), labels


def take(x: Images, index: torch.Tensor, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Float training images at `index` (files: decoded here, with the training transform)."""
    if isinstance(x, ImageFiles):
        out = x.finish(x.decode(index.cpu(), augment=True, seed=seed), device)
        x.check((index.cpu(), True, seed), out)
        return normalise(out.x.to(device))
    return to_float(x[index.to(x.device)])


def given_root(
    root: str | os.PathLike | None, env: str, name: str = "data root", hint: str = ""
) -> Path:
    """The folder of a benchmark on disk: `root` (`--root`), else the environment variable
    `env`; NtlabError when neither names an existing folder (`hint`: where to get it)."""
    if root is None or str(root) == "":
        root = os.environ.get(env)
    if not root:
        where = f" ({hint})" if hint else ""
        raise NtlabError(f"no {name} given; pass --root DIR or set {env}{where}")
    path = Path(root).expanduser()
    if not path.is_dir():
        where = f"; {hint}" if hint else ""
        raise NtlabError(f"{name} {path} does not exist or is not a folder{where}")
    return path
