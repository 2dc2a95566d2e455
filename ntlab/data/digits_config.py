"""How the embedded digits benchmark is built (its domains, sizes and format): torch-free,
so `ntlab data prepare --help` declares its defaults from here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ntlab.errors import NtlabError, unknown_name

FORMAT_VERSION = 1

DOMAINS: dict[str, tuple[str, str]] = {
    "mnist": ("real", "MNIST (LeCun & Cortes), the original IDX files"),
    "optdigits": ("real", "UCI optdigits 8×8 (scikit-learn load_digits), framed like MNIST"),
    "syn": ("generated", "digits in matplotlib's bundled fonts: colours, rotation, blur"),
    "mnistm": ("generated", "MNIST-M style: MNIST strokes blended over scikit-learn's photos"),
    "permlo": ("generated", "far shift: MNIST with its pixel positions permuted (fixed)"),
}
DEFAULT_TRAIN = {"mnist": 250, "optdigits": 100, "syn": 500, "mnistm": 250, "permlo": 1000}


@dataclass
class DigitsConfig:
    """How the benchmark is built; stored in the manifest and part of its fingerprint."""

    seed: int = 0
    size: int = 16
    train: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TRAIN))
    val: int = 1000
    test: int = 2000

    def validate(self) -> None:
        if not 8 <= self.size <= 64:
            raise NtlabError(f"--size must be between 8 and 64 pixels, got {self.size}")
        for name, n in self.train.items():
            if name not in DOMAINS:
                raise unknown_name("digits domain", name, DOMAINS)
            if n < 10:
                raise NtlabError(f"training size of {name} must be at least 10, got {n}")
        if self.val < 10 or self.test < 10:
            raise NtlabError("--val and --test must be at least 10 images each")

    def fingerprint(self) -> str:
        blob = json.dumps({"v": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
