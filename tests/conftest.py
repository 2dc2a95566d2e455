"""Shared fixtures: a private NTLAB_HOME, tiny MNIST-format files, a tiny prepared benchmark.

Tests never download. The fake MNIST files are real IDX files (gzip), made from
scikit-learn's bundled digits so that small models can actually learn them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ntlab.data.digits import DigitsConfig, prepare_digits
from ntlab.data.mnist import write_idx  # noqa: F401  (the tests' IDX writer)
from ntlab.data.mnist import write_stand_in_mnist as make_fake_mnist

# The CLI's rich consoles (ntlab.cli.common, imported by the test modules after this file) keep
# a COLUMNS they find when made, and pytest-xdist's workers start with COLUMNS=80. Tests that
# read wide tables set COLUMNS for each call instead.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

TINY_TRAIN = {"mnist": 60, "optdigits": 60, "syn": 60, "mnistm": 60, "permlo": 80}
TINY = DigitsConfig(seed=0, size=16, train=TINY_TRAIN, val=50, test=60)


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
