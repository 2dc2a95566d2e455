"""Image lists: the layout of DomainNet, Office-31, Office-Home, PACS and VisDA.

A root folder holds one folder of images per domain and `image_list/<domain>_<split>.txt`
files, one image per line: `relative/path label` (the path may contain spaces; the last
token is the integer label). This module reads and checks the lists; every problem is
reported with the file and line, at start-up, before any image is opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ntlab.errors import NtlabError

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

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor, name: str) -> ImageList:
        return ImageList(
            Path(f"{self.path}[{name}]"),
            tuple(self.images[i] for i in index.tolist()),
            self.labels[index],
        )


def check_root(root: Path | str | None, env: str = "NTLAB_DOMAINNET") -> Path:
    """The benchmark's root folder: `--root`, else the environment variable `env`."""
    if root is None or str(root) == "":
        root = os.environ.get(env)
    if not root:
        raise NtlabError(f"no data root given; pass --root DIR or set {env}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise NtlabError(f"data root {root} does not exist or is not a folder")
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
            raise NtlabError(f"unknown domain {name!r}; choose one of: {', '.join(known)}")
        if full in out:
            raise NtlabError(f"domain {full} is listed twice")
        out.append(full)
    if not out:
        raise NtlabError("no domains given")
    return out


def list_path(root: Path, domain: str, split: str) -> Path:
    return root / "image_list" / f"{domain}_{split}.txt"


def read_list(path: Path, num_classes: int | None = None) -> ImageList:
    """Read one list; a missing file, a line without a label, a label that is not an
    integer or is out of range fails with the file and line number."""
    if not path.is_file():
        raise NtlabError(f"image list {path} does not exist")
    images, labels = [], []
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
    if not images:
        raise NtlabError(f"image list {path} is empty")
    return ImageList(path, tuple(images), torch.tensor(labels, dtype=torch.long))


def split_val_from_test(test: ImageList, seed: int = VAL_FROM_TEST_SEED) -> dict[str, ImageList]:
    """A domain without a val list: its test list split 50/50 into val and test with a fixed
    seed (paper App. C.3). The same list always gives the same split."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(test), generator=generator)
    half = len(test) // 2
    return {
        "val": test.subset(order[:half].sort().values, "val"),
        "test": test.subset(order[half:].sort().values, "test"),
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
