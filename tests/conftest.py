"""Shared fixtures: a private NTLAB_HOME, tiny MNIST-format files, a tiny prepared benchmark.

Tests never download. The fake MNIST files are real IDX files (gzip), made from
scikit-learn's bundled digits so that small models can actually learn them.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ntlab.data.digits import DigitsConfig, prepare_digits

TINY_TRAIN = {"mnist": 60, "optdigits": 60, "syn": 60, "mnistm": 60, "permlo": 80}
TINY = DigitsConfig(seed=0, size=16, train=TINY_TRAIN, val=50, test=60)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def make_fake_mnist(folder: Path, n_train: int = 700, n_test: int = 300) -> dict[str, str]:
    """Four gzip IDX files in MNIST's names; returns their MD5 sums."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().div(16).unsqueeze(1)
    x = F.pad(F.interpolate(x, size=(20, 20), mode="bilinear"), (4, 4, 4, 4))
    images = (x.squeeze(1).clamp(0, 1) * 255).round().byte().numpy()
    labels = bunch.target.astype(np.uint8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    tr, te = order[:n_train], order[n_train : n_train + n_test]
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        "train-images-idx3-ubyte.gz": images[tr],
        "train-labels-idx1-ubyte.gz": labels[tr],
        "t10k-images-idx3-ubyte.gz": images[te],
        "t10k-labels-idx1-ubyte.gz": labels[te],
    }
    sums = {}
    for name, arr in parts.items():
        write_idx(folder / name, arr)
        sums[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    return sums


@pytest.fixture(scope="session", autouse=True)
def ntlab_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No test reads or writes the user's real cache."""
    home = tmp_path_factory.mktemp("ntlab_home")
    os.environ["NTLAB_HOME"] = str(home)
    torch.set_num_threads(1)
    return home


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("mnist")
    return folder, make_fake_mnist(folder)


@pytest.fixture(scope="session")
def tiny_digits(ntlab_home: Path, fake_mnist: tuple[Path, dict[str, str]]) -> Path:
    """The digits benchmark, tiny, prepared once into the test NTLAB_HOME."""
    root, _ = prepare_digits(TINY, mnist_dir=fake_mnist[0], verify_mnist=False)
    return root
