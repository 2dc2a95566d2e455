"""Tiny image-list trees on disk: generated JPEGs in the real list format.

`domainnet_tree` has DomainNet's shape (six domain folders, `image_list/<domain>_<split>.txt`,
labels among 345 classes; `real` has a val list, the others split their test list).
`imagelist_tree` is an Office-style set: three domains, seven classes, class folders whose
names hold spaces (the path may, the label is the last token).

Each class has its own colour and stripe direction, so a small network can learn them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import encode_jpeg

from ntlab.data.imagelist import DOMAINNET_DOMAINS

DOMAINNET_LABELS = (0, 5, 17, 100, 344)  # spread over the 345 classes, both ends included
OFFICE_DOMAINS = ("amazon", "dslr", "webcam")
OFFICE_CLASSES = (
    "back pack", "bike", "calculator", "headphones", "keyboard", "laptop computer", "mouse",
)  # fmt: skip


def class_image(label: int, index: int, domain: int, height: int = 40, width: int = 52) -> bytes:
    """A JPEG whose colour and stripes tell its class; the domain shifts brightness."""
    g = torch.Generator().manual_seed(label * 1000 + index * 10 + domain)
    hue = torch.tensor([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256]).float()
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    stripes = ((xx if label % 2 else yy) // 4 % 2).float()
    img = hue.view(3, 1, 1) * (0.6 + 0.4 * stripes) + 30 * domain
    img = img + 20 * torch.randn(3, height, width, generator=g)
    return encode_jpeg(img.clamp(0, 255).to(torch.uint8), quality=90).numpy().tobytes()


def write_tree(
    root: Path,
    domains: tuple[str, ...],
    classes: dict[int, str],
    per_class: dict[str, int],
    val_list: tuple[str, ...] = (),
) -> Path:
    """Write `per_class[split]` images per class and domain, and the lists."""
    (root / "image_list").mkdir(parents=True, exist_ok=True)
    for d, domain in enumerate(domains):
        splits = ("train", "test", "val") if domain in val_list else ("train", "test")
        counter = 0
        for split in splits:
            lines = []
            for label, folder in classes.items():
                for _ in range(per_class[split]):
                    rel = f"{domain}/{folder}/{domain}_{counter:04d}.jpg"
                    path = root / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(class_image(label, counter, d))
                    lines.append(f"{rel} {label}")
                    counter += 1
            (root / "image_list" / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def domainnet_tree(root: Path) -> Path:
    classes = {label: f"class_{label:03d}" for label in DOMAINNET_LABELS}
    return write_tree(
        root, DOMAINNET_DOMAINS, classes, {"train": 3, "test": 2, "val": 1}, val_list=("real",)
    )


def imagelist_tree(root: Path) -> Path:
    return write_tree(
        root, OFFICE_DOMAINS, dict(enumerate(OFFICE_CLASSES)), {"train": 3, "test": 2, "val": 1}
    )
