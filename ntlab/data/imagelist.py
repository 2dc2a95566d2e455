"""Image lists: the layout of DomainNet, Office-31, Office-Home, PACS and VisDA.

A root folder holds one folder of images per domain and `image_list/<domain>_<split>.txt`
files, one image per line: `relative/path label` (the path may contain spaces; the last
token is the integer label). This module reads and checks the lists; every problem is
reported with the file and line, at start-up, before any image is opened.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ntlab.catalog import DECODERS, IMAGE_LIST_OPTIONS
from ntlab.data.benchmark import BENCHMARKS, TaskData
from ntlab.data.files import DEFAULT_SIZE, ImageFiles, SkipLog, default_workers, given_root
from ntlab.errors import NtlabError, unknown_name

DOMAINNET_DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
DOMAINNET_ALIASES = {d[0]: d for d in DOMAINNET_DOMAINS}  # c i p q r s
DOMAINNET_CLASSES = 345
VAL_FROM_TEST_SEED = 0  # the fixed seed of the 50/50 test → val/test split (paper App. C.3)


@dataclass(frozen=True)
class ImageList:
    """One list file, read: image paths (relative to the root) and labels."""

    path: Path
    images: tuple[str, ...]
    labels: torch.Tensor  # int64, one per image
    lines: tuple[int, ...] = ()  # the line of each image in the list file

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor) -> ImageList:
        """The images at `index`, still named by their file and line."""
        return ImageList(
            self.path,
            tuple(self.images[i] for i in index.tolist()),
            self.labels[index],
            tuple(self.lines[i] for i in index.tolist()),
        )


def check_root(root: Path | str | None, env: str = "NTLAB_DOMAINNET") -> Path:
    """The benchmark's root folder: `--root`, else the environment variable `env`."""
    root = given_root(root, env)
    if not (root / "image_list").is_dir():
        raise NtlabError(
            f"{root} has no image_list/ folder; expected image_list/<domain>_<split>.txt files"
        )
    return root


def resolve_domains(names: list[str], known: tuple[str, ...] | None = None) -> list[str]:
    """Domain names with DomainNet's one-letter aliases (c i p q r s) expanded."""
    out = []
    for name in names:
        full = DOMAINNET_ALIASES.get(name, name) if known == DOMAINNET_DOMAINS else name
        if known is not None and full not in known:
            raise unknown_name("domain", name, known)
        if full in out:
            raise NtlabError(f"domain {full} is listed twice")
        out.append(full)
    if not out:
        raise NtlabError("no domains given")
    return out


def list_path(root: Path, domain: str, split: str) -> Path:
    return root / "image_list" / f"{domain}_{split}.txt"


_READ: dict[tuple, ImageList] = {}  # (path, mtime, size, classes) → the list, read once


def read_list(path: Path, num_classes: int | None = None) -> ImageList:
    """Read one list; a missing file, a line without a label, a label that is not an
    integer or is out of range fails with the file and line number. A list is parsed once
    per process while its file is unchanged (cache keys and loads read it again and again)."""
    if not path.is_file():
        raise NtlabError(f"image list {path} does not exist")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, num_classes)
    if key not in _READ:
        _READ[key] = _parse_list(path, num_classes)
    return _READ[key]


def _parse_list(path: Path, num_classes: int | None) -> ImageList:
    images, labels, lines = [], [], []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(maxsplit=1)  # the path may hold spaces; the label may not
            if len(parts) < 2:
                raise NtlabError(f"{path}:{number}: no label after the image path: {text!r}")
            image, label = parts
            try:
                value = int(label)
            except ValueError:
                raise NtlabError(
                    f"{path}:{number}: the label {label!r} is not an integer"
                ) from None
            if value < 0 or (num_classes is not None and value >= num_classes):
                bound = f"0..{num_classes - 1}" if num_classes is not None else "≥ 0"
                raise NtlabError(f"{path}:{number}: label {value} is out of range ({bound})")
            images.append(image.strip())
            labels.append(value)
            lines.append(number)
    if not images:
        raise NtlabError(f"image list {path} is empty")
    return ImageList(path, tuple(images), torch.tensor(labels, dtype=torch.long), tuple(lines))


def split_val_from_test(test: ImageList, seed: int = VAL_FROM_TEST_SEED) -> dict[str, ImageList]:
    """A domain without a val list: its test list split 50/50 into val and test with a fixed
    seed (paper App. C.3). The same list always gives the same split."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(test), generator=generator)
    half = len(test) // 2
    return {
        "val": test.subset(order[:half].sort().values),
        "test": test.subset(order[half:].sort().values),
    }


def read_domain(root: Path, domain: str, num_classes: int | None = None) -> dict[str, object]:
    """Every split of one domain: train and test lists are required; val is read when its
    list exists, else split from test. Returns the lists and how val was made."""
    train = read_list(list_path(root, domain, "train"), num_classes)
    test = read_list(list_path(root, domain, "test"), num_classes)
    val_path = list_path(root, domain, "val")
    if val_path.is_file():
        return {"train": train, "val": read_list(val_path, num_classes), "test": test,
                "val_source": "list"}  # fmt: skip
    split = split_val_from_test(test)
    return {**split, "train": train, "val_source": f"test split 50/50, seed {VAL_FROM_TEST_SEED}"}


def count_classes(lists: list[ImageList]) -> int:
    """The class count of a benchmark read from its lists (largest label + 1)."""
    return int(max(int(lst.labels.max()) for lst in lists)) + 1


# --- the benchmarks ------------------------------------------------------------------------


class ImageListBenchmark:
    """Any dataset in the image-list layout: `--root DIR`, domains from `--domains a,b,c`
    (default: every `image_list/<domain>_train.txt`), class count read from the lists."""

    name = "imagelist"
    description = "image lists under --root (Office-31, Office-Home, PACS, VisDA, …)"
    env = "NTLAB_IMAGELIST"
    options: tuple[str, ...] = IMAGE_LIST_OPTIONS
    known_domains: tuple[str, ...] | None = None
    classes: int | None = None  # fixed class count (labels are checked against it)

    def __init__(
        self,
        root: Path | str | None = None,
        domains: list[str] | None = None,
        image_size: int | None = None,
        skip_bad_images: bool = False,
        workers: int | None = None,
        decode: str | None = None,
    ) -> None:
        self._root_arg, self._domains_arg = root, domains
        self.image_size = image_size or DEFAULT_SIZE
        if self.image_size < 32:
            raise NtlabError(f"--image-size must be at least 32 pixels, got {self.image_size}")
        self.log = SkipLog(skip_bad_images)
        self.workers = default_workers() if workers is None else workers
        if self.workers < 0:
            raise NtlabError(f"--workers must be ≥ 0, got {self.workers}")
        if decode not in (None, *DECODERS):
            raise unknown_name("--decode", decode, DECODERS)
        self.decoder = "device" if decode == "gpu" else "workers"  # ImageFiles.decoder
        self._root: Path | None = None
        self._lists: dict[str, dict] = {}

    @property
    def setup_hint(self) -> str:
        return f"not configured: pass --root DIR or set {self.env}"

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = check_root(self._root_arg, self.env)
        return self._root

    def canonical(self, name: str) -> str:
        """A task name with its alias expanded (DomainNet: c → clipart)."""
        if self.known_domains == DOMAINNET_DOMAINS:
            return DOMAINNET_ALIASES.get(name, name)
        return name

    def tasks(self) -> list[str]:
        if self._domains_arg:
            return resolve_domains(list(self._domains_arg), self.known_domains)
        if self.known_domains is not None:
            return list(self.known_domains)
        found = sorted(
            p.name.removesuffix("_train.txt")
            for p in (self.root / "image_list").glob("*_train.txt")
        )
        if not found:
            raise NtlabError(
                f"{self.root / 'image_list'} has no <domain>_train.txt list; pass --domains"
            )
        return found

    def domain(self, name: str) -> dict:
        """The domain's lists (read and checked once)."""
        if name not in self._lists:
            self._lists[name] = read_domain(self.root, name, self.classes)
        return self._lists[name]

    def num_classes(self) -> int:
        if self.classes is not None:
            return self.classes
        return count_classes(
            [self.domain(d)[s] for d in self.tasks() for s in ("train", "val", "test")]
        )

    def fingerprint(self) -> dict:
        """The root, the domains, a digest of every list file and how each val split was
        made (recorded in each run's config): changes whenever the lists change."""
        digest = hashlib.sha256()
        val = {}
        for d in self.tasks():
            lists = self.domain(d)
            val[d] = lists["val_source"]
            for split in ("train", "val", "test"):
                path = list_path(self.root, d, split)
                if path.is_file():
                    digest.update(f"{d}_{split}".encode())
                    digest.update(path.read_bytes())
        return {
            "benchmark": self.name,
            "root": str(self.root.resolve()),
            "domains": self.tasks(),
            "classes": self.num_classes(),
            "lists_sha256": digest.hexdigest()[:16],
            "val_split": val,
        }

    def load(self, tasks: list[str], device: torch.device | str = "cpu") -> dict[str, TaskData]:
        known = self.tasks()
        classes = self.num_classes()
        out = {}
        for name in tasks:
            if name not in known:
                raise unknown_name("domain", name, known)
            lists = self.domain(name)
            splits = {}
            for split in ("train", "val", "test"):
                lst: ImageList = lists[split]
                files = ImageFiles(
                    self.root,
                    np.array(lst.images, dtype=object),
                    (str(lst.path),),
                    np.zeros(len(lst), dtype=np.int32),
                    np.array(lst.lines, dtype=np.int64),
                    self.image_size,
                    self.workers,
                    self.log,
                    self.decoder,
                )
                splits[split] = (files, lst.labels.to(device, copy=True))  # the list is shared
            out[name] = TaskData(name, classes, splits)
        return out

    def skipped(self) -> dict:
        return self.log.summary()

    def describe(self) -> list[dict]:
        try:
            tasks = self.tasks() if self._root_arg or os.environ.get(self.env) else []
            rows = []
            for d in tasks:
                lists = self.domain(d)
                rows.append(
                    {
                        "task": d,
                        "kind": "image list",
                        "splits": {s: len(lists[s]) for s in ("train", "val", "test")},
                        "path": str(self.root / d),
                        "description": f"val: {lists['val_source']}",
                    }
                )
            return rows
        except NtlabError:
            return []


class DomainNet(ImageListBenchmark):
    """DomainNet (Peng et al. 2019): six domains, 345 classes, `--root` or NTLAB_DOMAINNET."""

    name = "domainnet"
    description = "DomainNet under --root or NTLAB_DOMAINNET (6 domains, 345 classes)"
    env = "NTLAB_DOMAINNET"
    options = ("root", "image_size", "skip_bad_images", "workers", "decode")  # six domains
    known_domains = DOMAINNET_DOMAINS
    classes = DOMAINNET_CLASSES


BENCHMARKS.register("imagelist")(ImageListBenchmark)
BENCHMARKS.register("domainnet")(DomainNet)
