"""NYUv2 for dense multi-task learning: reading and checking MTAN's preprocessed `.npy` files.

NYUv2 (Silberman et al., 2012) as MTAN (Liu et al., 2019) preprocessed it, and as ForkMerge
and LibMTL use it: 1,449 indoor images at 288×384, each with three dense targets: 13-class
semantic segmentation, depth and surface normals. Get it as MTAN's `nyuv2.zip` (linked
from the READMEs of github.com/lorenmt/mtan and github.com/median-research-group/LibMTL),
unpack it, and pass its folder as `root` or set `NTLAB_NYUV2`.

Layout
------
``ROOT/{train,val}/{image,label,depth,normal}/<i>.npy``, one file per image and modality,
`<i>` an integer (0…794 in `train/`, 0…653 in `val/` in MTAN's release):

- image  H×W×3, float in 0..1 (MTAN's files: float32 or float64), or uint8 0..255
- label  H×W (or H×W×1), class 0..12, −1 ignored; MTAN stores it as float: the values
  must be integers
- depth  H×W×1 (or H×W), metres, ≥ 0; 0 marks a pixel without depth
- normal H×W×3, roughly unit length; the zero vector marks a pixel without a normal

Every file of the tree has the same H×W (288×384 in MTAN's release; tests use smaller).

Splits
------
`val/` (654 images) is the **test** set, as in the papers. The images of `train/` are split
into **train** and **val** by `split_train_val`: a permutation of their sorted indices
drawn from `torch.Generator().manual_seed(SPLIT_SEED)`, the first ``n − round(n/5)`` to
train and the rest to val (each part sorted). For MTAN's 795 files that is 636 / 159, the
sizes of the authors' split; its membership is not reproduced (their split file does not
come with the data). Any other count is split by the same 80/20 rule (12 files → 10 / 2).
The seed and rule are part of every `load_nyuv2` result (`meta`) and of `nyuv2_manifest`,
so a changed split changes the cache key.

Reading
-------
`load_nyuv2(root, split, size)` returns a dict of tensors, one row per image:

- ``image``   uint8 [N, 3, H, W]: the float images ×255, rounded (an error ≤ 1/510, below
  what their 8-bit source holds). uint8 keeps MTAN's 795 train images at 264 MB instead of
  1 GB in float32; the model normalises batches on its device, as for every benchmark.
- ``segment`` int64 [N, H, W], −1 ignored (what `cross_entropy(..., ignore_index=-1)` takes)
- ``depth``   float32 [N, 1, H, W], 0 = invalid
- ``normal``  float32 [N, 3, H, W], the zero vector = invalid
- ``index``   int64 [N], the file index `<i>` of each row
- ``meta``    a dict (not a tensor): split, folder, seed, split rule, size, fingerprint

(`dtype=torch.float16` halves depth and normals; at 288×384 the four tensors of the 795
train files take 2.4 GB in float32.)

`size=(h, w)` downscales (only down) as each file is read, for CPU runs: images by area
averaging; labels by nearest neighbour (pixel centres; −1 stays −1, no new classes); depth
and normals by *masked* area averaging: an output pixel is valid when at least half of the
input area it covers is valid, and its value is the mean of the valid inputs only (invalid
zeros are never averaged in); it is 0 (the zero vector) otherwise, and normals are scaled
back to unit length. So a wholly invalid region stays invalid, and no depth shrinks towards 0.

Checks
------
Before anything is read, `nyuv2_files` lists the tree: each of the four folders under
`train/` and `val/` must exist, every `.npy` file must be named `<integer>.npy`, and every
index must have all four modalities (e.g. `train/depth/7.npy` missing while
`train/image/7.npy` exists). Then each file is read once (`np.load` without pickles) and
checked with vectorised numpy: readable (not damaged), the shape of its modality, the same
H×W as the rest of the tree, finite values (no NaN/inf), labels integer-valued in −1..12,
images in 0..1 (floats; 1e-3 of slack, clipped) or uint8, depth ≥ 0, normals either zero
or of length 1 ± 0.1 (at most 5% of a file's valid pixels may be off, for resampled edges;
none may be longer than 1.5). Every problem of a load is collected; the `NtlabError` names
the first file's path and what to do, and counts the rest. `check_nyuv2(root)` reads and
checks the whole tree without keeping it.

Fingerprint
-----------
`nyuv2_fingerprint(root)` hashes (SHA-256) the relative path, size and mtime (ns) of every
`.npy` file: 5,796 `stat` calls, no reads. Replacing a file changes it; a copy that resets
mtimes changes it too (a retrain, the safe direction); an in-place edit that keeps both
size and mtime is not seen. The root's own path is not hashed: moved data keep their key.

Use by the `nyuv2` benchmark (later)
------------------------------------
The benchmark will resolve the root with `find_nyuv2` (exit 2 on `NtlabError`), key its
cache on `nyuv2_manifest` (fingerprint, seed, rule, counts) plus the size, and load the
three splits with `load_nyuv2` once per run; its three tasks (segmentation, depth,
normals) share the images and read their targets from ``segment``, ``depth`` and
``normal``, with the invalid-pixel masks `depth > 0` and `normal.abs().sum(1) > 0`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ntlab.data.files import given_root
from ntlab.errors import NtlabError, unknown_name

ENV = "NTLAB_NYUV2"
CLASSES = 13  # segmentation classes 0..12; IGNORE marks unlabelled pixels
IGNORE = -1
FULL_SIZE = (288, 384)
FOLDERS = ("train", "val")  # on disk; val/ is the test set
MODALITIES = ("image", "label", "depth", "normal")
SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
VAL_SHARE = (1, 5)  # val gets round(n · 1/5) of train/'s files
SPLIT_RULE = "train/ permuted with torch seed 0; round(n/5) to val, the rest to train"
IMAGE_SLACK = 1e-3  # float images may overshoot 0..1 by this much (clipped)
NORMAL_TOLERANCE = 0.1  # |length − 1| allowed for a valid normal …
NORMAL_OFF_SHARE = 0.05  # … except on this share of a file's valid pixels
NORMAL_MAX_LENGTH = 1.5
WHERE = (
    "expected ROOT/{train,val}/{image,label,depth,normal}/<i>.npy: MTAN's preprocessed "
    "NYUv2 (nyuv2.zip, linked from github.com/lorenmt/mtan), unpacked"
)
_MORE = 3  # problems listed after the first


def find_nyuv2(root: str | os.PathLike | None = None) -> Path:
    """The NYUv2 root: `root`, else `$NTLAB_NYUV2`; it must hold the layout's folders."""
    path = given_root(root, ENV, "NYUv2 folder", WHERE)
    missing = [f"{f}/{m}/" for f in FOLDERS for m in MODALITIES if not (path / f / m).is_dir()]
    if missing:
        raise NtlabError(f"{path} is not an NYUv2 folder: no {', '.join(missing)}; {WHERE}")
    return path


def split_sizes(n: int) -> tuple[int, int]:
    """(train, val) counts for `n` files of train/: round(n/5) to val (795 → 636, 159)."""
    if n < 2:
        raise NtlabError(f"NYUv2's train/ needs at least 2 images to split, found {n}")
    num, den = VAL_SHARE
    val = min(max((2 * n * num + den) // (2 * den), 1), n - 1)  # round half up, ≥ 1 each
    return n - val, val


def split_train_val(indices: Sequence[int] | torch.Tensor, seed: int = SPLIT_SEED) -> dict:
    """The seeded train/val split of train/'s file indices: {"train", "val"} (sorted int64
    tensors, disjoint, covering), "seed" and "rule". The same indices always split alike."""
    pool = torch.as_tensor(list(indices) if not torch.is_tensor(indices) else indices)
    pool = pool.to(torch.int64).sort().values
    n_train, _ = split_sizes(len(pool))
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return {
        "train": pool[order[:n_train]].sort().values,
        "val": pool[order[n_train:]].sort().values,
        "seed": seed,
        "rule": SPLIT_RULE if seed == SPLIT_SEED else SPLIT_RULE.replace("seed 0", f"seed {seed}"),
    }


# --- listing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NYUv2Files:
    """The tree, listed (no file read): the indices of each folder, checked complete."""

    root: Path
    indices: dict[str, tuple[int, ...]]  # folder → sorted indices

    def path(self, folder: str, modality: str, index: int) -> Path:
        return self.root / folder / modality / f"{index}.npy"


def _fail(problems: list[str], what: str) -> None:
    """One NtlabError for collected problems: the first in full, then a count and a few."""
    if not problems:
        return
    tail = ""
    if len(problems) > 1:
        more = "; ".join(problems[1 : 1 + _MORE]) + ("; …" if len(problems) > 1 + _MORE else "")
        tail = f" ({len(problems) - 1} more: {more})"
    raise NtlabError(f"{problems[0]}{'; ' + what if what else ''}{tail}")


def nyuv2_files(root: str | os.PathLike | None = None) -> NYUv2Files:
    """List and check the tree's names: `<integer>.npy` files, all four modalities for
    every index of a folder. Fails with the first incomplete index's missing path."""
    root = find_nyuv2(root)
    problems: list[str] = []
    indices: dict[str, tuple[int, ...]] = {}
    for folder in FOLDERS:
        found: dict[str, set[int]] = {}
        for modality in MODALITIES:
            found[modality] = set()
            with os.scandir(root / folder / modality) as entries:
                for entry in entries:
                    if not entry.name.endswith(".npy"):
                        continue
                    stem = entry.name[: -len(".npy")]
                    if not (stem.isascii() and stem.isdigit() and str(int(stem)) == stem):
                        problems.append(
                            f"{root / folder / modality / entry.name}: not named <integer>.npy "
                            "(rename or remove it)"
                        )
                        continue
                    found[modality].add(int(stem))
        every = set().union(*found.values())
        for index in sorted(every):
            have = [m for m in MODALITIES if index in found[m]]
            for modality in MODALITIES:
                if index not in found[modality]:
                    problems.append(
                        f"{root / folder / modality / f'{index}.npy'} is missing while "
                        f"{root / folder / have[0] / f'{index}.npy'} exists"
                    )
        if not every and not problems:
            problems.append(f"{root / folder / 'image'} holds no <i>.npy files ({WHERE})")
        indices[folder] = tuple(sorted(every))
    _fail(
        problems,
        "restore the missing files (unpack the data again) or remove that index "
        "from every modality",
    )
    return NYUv2Files(root, indices)


def _fingerprint(files: NYUv2Files) -> str:
    digest = hashlib.sha256()
    for folder in FOLDERS:
        for modality in MODALITIES:
            for index in files.indices[folder]:
                stat = files.path(folder, modality, index).stat()
                line = f"{folder}/{modality}/{index}.npy {stat.st_size} {stat.st_mtime_ns}\n"
                digest.update(line.encode())
    return digest.hexdigest()


def nyuv2_fingerprint(root: str | os.PathLike | None = None) -> str:
    """SHA-256 of every `.npy` file's relative path, size and mtime (stat only, no reads)."""
    return _fingerprint(nyuv2_files(root))


def _manifest(files: NYUv2Files) -> dict:
    split = split_train_val(files.indices["train"])
    return {
        "dataset": "nyuv2",
        "root": str(files.root),
        "fingerprint": _fingerprint(files),
        "files": {f: len(files.indices[f]) for f in FOLDERS},
        "splits": {
            "train": len(split["train"]),
            "val": len(split["val"]),
            "test": len(files.indices["val"]),
        },
        "split_seed": split["seed"],
        "split_rule": split["rule"],
        "test_from": "val/",
    }


def nyuv2_manifest(root: str | os.PathLike | None = None) -> dict:
    """What identifies the data and its split (JSON): for cache keys and run configs."""
    return _manifest(nyuv2_files(root))


# --- reading and checking one file -----------------------------------------------------------


def _read(path: Path) -> np.ndarray:
    try:
        with path.open("rb") as handle:
            if handle.read(6) != b"\x93NUMPY":
                raise _Problem(
                    f"{path}: not a .npy file (no numpy header); replace it from the original data"
                )
            handle.seek(0)
            array = np.load(handle, allow_pickle=False)
    except _Problem:
        raise
    except Exception as exc:  # cut short, a damaged header, pickled objects, unreadable
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        if "pickle" in text:
            reason = "it holds pickled objects, not an array"
        raise _Problem(
            f"{path}: not a readable .npy file ({reason}); replace it from the original data"
        ) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        kind = type(array).__name__ if not isinstance(array, np.ndarray) else array.dtype
        raise _Problem(f"{path}: holds {kind}, not a numeric array; replace it")
    return array


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


class _Problem(Exception):
    """One file's problem (collected; the load raises one NtlabError for them all)."""


def _hw(path: Path, array: np.ndarray, modality: str) -> np.ndarray:
    """The array as H×W×C (C = 3, or 1 for label and depth), or a _Problem."""
    channels = 3 if modality in ("image", "normal") else 1
    shape = tuple(array.shape)
    if array.ndim == 2 and channels == 1:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] != channels:
        want = {"image": "H×W×3", "normal": "H×W×3", "label": "H×W", "depth": "H×W×1"}
        raise _Problem(f"{path}: shape {shape}, expected {want[modality]}; replace it")
    return array


def _finite(path: Path, array: np.ndarray) -> None:
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            raise _Problem(
                f"{path}: {_count(int(bad.sum()), 'non-finite value')} (NaN or inf); "
                "replace the file or mark those pixels invalid"
            )


def check_image(path: Path, array: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 from a float 0..1 or an integer 0..255 image."""
    if array.dtype.kind == "f":
        low, high = float(array.min()), float(array.max())
        if low < -IMAGE_SLACK or high > 1 + IMAGE_SLACK:
            raise _Problem(
                f"{path}: image values {low:g}..{high:g}, expected floats in 0..1 (MTAN's "
                "release) or uint8; divide 0..255 floats by 255"
            )
        return np.rint(np.clip(array, 0, 1) * 255).astype(np.uint8)
    if array.dtype.kind == "b" or array.min() < 0 or array.max() > 255:
        raise _Problem(f"{path}: integer image values outside 0..255; replace it")
    return array.astype(np.uint8, copy=False)


def check_label(path: Path, array: np.ndarray) -> np.ndarray:
    """int64 H×W×1 labels in −1..12 (integer-valued floats accepted)."""
    if array.dtype.kind == "f":
        off = array != np.rint(array)
        if off.any():
            value = float(array[off].flat[0])
            raise _Problem(
                f"{path}: {_count(int(off.sum()), 'label')} not integer (e.g. {value:g}); "
                "labels are classes 0..12 or -1, replace it"
            )
    low, high = array.min(), array.max()
    if low < IGNORE or high > CLASSES - 1:
        raise _Problem(
            f"{path}: labels {low:g}..{high:g}, expected classes 0..{CLASSES - 1} "
            f"or {IGNORE} (ignored); replace it"
        )
    return array.astype(np.int64)


def check_depth(path: Path, array: np.ndarray) -> np.ndarray:
    """float32 H×W×1 depth ≥ 0 (0 = invalid)."""
    low = float(array.min())
    if low < 0:
        raise _Problem(
            f"{path}: negative depth ({low:g}); depth is metres ≥ 0 with 0 for "
            "invalid pixels, replace it"
        )
    return array.astype(np.float32, copy=False)


def check_normal(path: Path, array: np.ndarray) -> np.ndarray:
    """float32 H×W×3 normals: each the zero vector (invalid) or of length about 1."""
    normal = array.astype(np.float32, copy=False)
    length = np.sqrt(np.einsum("hwc,hwc->hw", normal, normal))
    valid = np.any(normal != 0, axis=2)
    longest = float(length.max()) if length.size else 0.0
    off = valid & (np.abs(length - 1) > NORMAL_TOLERANCE)
    n_valid, n_off = int(valid.sum()), int(off.sum())
    if longest > NORMAL_MAX_LENGTH or n_off > NORMAL_OFF_SHARE * n_valid:
        median = float(np.median(length[valid])) if n_valid else 0.0
        raise _Problem(
            f"{path}: normals are not unit vectors ({n_off} of {n_valid} valid pixels off "
            f"by > {NORMAL_TOLERANCE}, median length {median:.3g}, longest {longest:.3g}); "
            "normals are unit vectors (components -1..1) with the zero vector for invalid "
            "pixels, replace it"
        )
    return normal


_CHECK = {"image": check_image, "label": check_label, "depth": check_depth, "normal": check_normal}


# --- downscaling -----------------------------------------------------------------------------


def check_size(size: Sequence[int] | None, native: tuple[int, int]) -> tuple[int, int] | None:
    """`size` as (h, w), checked to downscale `native` (None or equal: no resizing)."""
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise NtlabError(f"NYUv2 size must be (height, width), got {size!r}") from None
    if not (0 < h <= native[0] and 0 < w <= native[1]):
        raise NtlabError(
            f"NYUv2 size {h}×{w} must downscale the data's "
            f"{native[0]}×{native[1]} (1..{native[0]} × 1..{native[1]})"
        )
    return None if (h, w) == tuple(native) else (h, w)


def downscale_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [N, 3, H, W] → uint8 [N, 3, h, w] by area averaging."""
    return F.interpolate(image.float(), size=size, mode="area").round_().clamp_(0, 255).byte()


def downscale_segment(segment: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """int64 [N, H, W] → [N, h, w] by nearest neighbour at pixel centres (labels stay labels)."""
    near = F.interpolate(segment[:, None].double(), size=size, mode="nearest-exact")
    return near[:, 0].long()


def downscale_masked(target: torch.Tensor, size: tuple[int, int], unit: bool) -> torch.Tensor:
    """Depth [N, 1, H, W] or normals [N, 3, H, W] → [N, C, h, w] by area averaging over
    valid pixels only: valid where at least half of the covered area is valid, else zero;
    `unit` scales valid outputs back to length 1 (normals)."""
    valid = (target != 0).any(dim=1, keepdim=True).to(target.dtype)
    share = F.interpolate(valid, size=size, mode="area")
    total = F.interpolate(target * valid, size=size, mode="area")
    out = total / share.clamp_min(1e-12)
    keep = share >= 0.5
    if unit:
        length = out.norm(dim=1, keepdim=True)
        keep &= length > 1e-6
        out = out / length.clamp_min(1e-6)
    else:
        keep &= out > 0
    return torch.where(keep, out, torch.zeros((), dtype=out.dtype))


# --- loading -------------------------------------------------------------------------------


def _rows(files: NYUv2Files, split: str) -> tuple[str, torch.Tensor, dict]:
    """The folder and file indices of `split`, and how they were chosen."""
    if split not in SPLITS:
        raise unknown_name("NYUv2 split", split, SPLITS)
    if split == "test":
        return "val", torch.tensor(files.indices["val"], dtype=torch.int64), {}
    parts = split_train_val(files.indices["train"])
    return "train", parts[split], {"seed": parts["seed"], "rule": parts["rule"]}


def _native_size(files: NYUv2Files) -> tuple[Path, tuple[int, int]]:
    """The tree's first image and its H×W (read from the .npy header): every file's size."""
    path = files.path("train", "image", files.indices["train"][0])
    try:
        shape = tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except Exception:
        try:
            shape = tuple(_read(path).shape)  # a file that cannot be mapped, or its problem
        except _Problem as problem:
            raise NtlabError(str(problem)) from None
    if len(shape) != 3:
        raise NtlabError(f"{path}: shape {shape}, expected H×W×3; replace it")
    return path, (int(shape[0]), int(shape[1]))


def _read_index(
    files: NYUv2Files,
    folder: str,
    i: int,
    first: Path,
    native: tuple[int, int],
    problems: list[str],
) -> dict[str, np.ndarray] | None:
    """The four checked H×W×C arrays of one index, or None (its problems appended)."""
    arrays: dict[str, np.ndarray] = {}
    for modality in MODALITIES:
        path = files.path(folder, modality, i)
        try:
            array = _hw(path, _read(path), modality)
            if array.shape[:2] != native:
                like = files.path(folder, "image", i) if "image" in arrays else first
                raise _Problem(
                    f"{path}: {array.shape[0]}×{array.shape[1]} pixels, but {like} is "
                    f"{native[0]}×{native[1]}; every file must have the same size, replace it"
                )
            _finite(path, array)
            arrays[modality] = _CHECK[modality](path, array)
        except _Problem as problem:
            problems.append(str(problem))
    return arrays if len(arrays) == len(MODALITIES) else None


def _load(
    files: NYUv2Files,
    folder: str,
    index: torch.Tensor,
    size: Sequence[int] | None,
    dtype: torch.dtype,
    problems: list[str],
) -> dict[str, torch.Tensor]:
    first, native = _native_size(files)
    out_size = check_size(size, native)
    h, w = out_size or native
    n = len(index)
    tensors = {
        "image": torch.zeros((n, 3, h, w), dtype=torch.uint8),
        "segment": torch.zeros((n, h, w), dtype=torch.int64),
        "depth": torch.zeros((n, 1, h, w), dtype=dtype),
        "normal": torch.zeros((n, 3, h, w), dtype=dtype),
    }
    for row, i in enumerate(index.tolist()):
        arrays = _read_index(files, folder, i, first, native, problems)
        if arrays is None:
            continue
        image = torch.from_numpy(np.ascontiguousarray(arrays["image"].transpose(2, 0, 1)))[None]
        segment = torch.from_numpy(arrays["label"][:, :, 0])[None]
        depth = torch.from_numpy(arrays["depth"].transpose(2, 0, 1))[None]
        normal = torch.from_numpy(arrays["normal"].transpose(2, 0, 1))[None]
        if out_size is not None:
            image = downscale_image(image, out_size)
            segment = downscale_segment(segment, out_size)
            depth = downscale_masked(depth, out_size, unit=False)
            normal = downscale_masked(normal, out_size, unit=True)
        tensors["image"][row] = image[0]
        tensors["segment"][row] = segment[0]
        tensors["depth"][row] = depth[0]
        tensors["normal"][row] = normal[0]
    tensors["index"] = index
    tensors["size"] = (h, w)  # popped by the callers
    tensors["native"] = native
    return tensors


def load_nyuv2(
    root: str | os.PathLike | None,
    split: str,
    size: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """One split ("train", "val" from train/, or "test" = val/) as tensors (see the module
    docstring), every file read once and checked; `size=(h, w)` downscales as it reads."""
    files = nyuv2_files(root)
    folder, index, how = _rows(files, split)
    problems: list[str] = []
    out = _load(files, folder, index, size, dtype, problems)
    _fail(problems, "")
    h, w = out.pop("size")
    native = out.pop("native")
    out["meta"] = {
        "split": split,
        "folder": f"{folder}/",
        "size": [h, w],
        "native_size": list(native),
        "split_seed": how.get("seed"),
        "split_rule": how.get("rule", "all of val/"),
        "fingerprint": _fingerprint(files),
    }
    return out


def check_nyuv2(root: str | os.PathLike | None = None) -> dict:
    """Read and check every file of the tree, each once, keeping nothing: its manifest when
    all is well, else an NtlabError naming the first bad file and counting the others."""
    files = nyuv2_files(root)
    first, native = _native_size(files)
    problems: list[str] = []
    for folder in FOLDERS:
        for i in files.indices[folder]:
            _read_index(files, folder, i, first, native, problems)
    _fail(problems, "")
    return _manifest(files)
