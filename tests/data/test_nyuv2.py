"""NYUv2's data layer: MTAN's `.npy` tree read into tensors, the seeded split, downscaling
that keeps invalid pixels invalid, and a clear error naming the file for every bad one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ntlab.data.nyuv2 import (
    CLASSES,
    check_nyuv2,
    downscale_masked,
    find_nyuv2,
    load_nyuv2,
    nyuv2_fingerprint,
    nyuv2_manifest,
    split_sizes,
    split_train_val,
)
from ntlab.errors import NtlabError

H, W = 36, 48
N_TRAIN, N_TEST = 12, 6


def sample(rng: np.random.Generator, h: int = H, w: int = W) -> dict[str, np.ndarray]:
    """One valid index in MTAN's dtypes: float images and labels, invalid pixels marked."""
    label = rng.integers(-1, CLASSES, size=(h, w)).astype(np.float32)
    depth = rng.uniform(0.5, 10, size=(h, w, 1)).astype(np.float32)
    depth[: h // 4] = 0  # a band without depth
    normal = rng.normal(size=(h, w, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=2, keepdims=True)
    normal[:, : w // 4] = 0  # a band without normals
    image = rng.uniform(0, 1, size=(h, w, 3))  # float64, as some of MTAN's files
    return {"image": image, "label": label, "depth": depth, "normal": normal}


def write_tree(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    rng = np.random.default_rng(0)
    for folder, n in (("train", n_train), ("val", n_test)):
        for modality in ("image", "label", "depth", "normal"):
            (root / folder / modality).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            for modality, array in sample(rng).items():
                np.save(root / folder / modality / f"{i}.npy", array)
    return root


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "nyuv2")


def test_each_split_loads_as_tensors_with_the_documented_dtypes(tree):
    train = load_nyuv2(tree, "train")
    assert train["image"].shape == (10, 3, H, W) and train["image"].dtype == torch.uint8
    assert train["segment"].shape == (10, H, W) and train["segment"].dtype == torch.int64
    assert train["depth"].shape == (10, 1, H, W) and train["depth"].dtype == torch.float32
    assert train["normal"].shape == (10, 3, H, W) and train["normal"].dtype == torch.float32
    assert len(load_nyuv2(tree, "val")["index"]) == 2
    test = load_nyuv2(tree, "test")
    assert test["index"].tolist() == list(range(N_TEST))
    assert test["meta"]["folder"] == "val/" and train["meta"]["split_seed"] == 0
    # the values are the files' own, in NCHW
    i = int(train["index"][3])
    raw = {m: np.load(tree / "train" / m / f"{i}.npy") for m in ("image", "label", "normal")}
    want = torch.from_numpy(np.rint(raw["image"] * 255).transpose(2, 0, 1)).byte()
    assert torch.equal(train["image"][3], want)
    assert torch.equal(train["segment"][3], torch.from_numpy(raw["label"]).long())
    assert torch.equal(train["normal"][3], torch.from_numpy(raw["normal"].transpose(2, 0, 1)))
    assert load_nyuv2(tree, "test", dtype=torch.float16)["depth"].dtype == torch.float16
    with pytest.raises(NtlabError, match="unknown NYUv2 split 'tset'; did you mean 'test'"):
        load_nyuv2(tree, "tset")


def test_the_split_is_seeded_disjoint_and_covering():
    assert split_sizes(795) == (636, 159)  # MTAN's train/ → the paper's 636 / 159
    assert split_sizes(12) == (10, 2)
    assert split_sizes(2) == (1, 1)
    with pytest.raises(NtlabError, match="at least 2"):
        split_sizes(1)
    full = split_train_val(range(795))
    assert (len(full["train"]), len(full["val"])) == (636, 159)
    both = torch.cat([full["train"], full["val"]]).sort().values
    assert torch.equal(both, torch.arange(795))  # disjoint and covering
    again = split_train_val(list(reversed(range(795))))  # the file order does not matter
    assert torch.equal(again["train"], full["train"]) and full["seed"] == 0
    other = split_train_val(range(795), seed=1)
    assert not torch.equal(other["train"], full["train"]) and "seed 1" in other["rule"]
    assert not torch.equal(full["val"], torch.arange(636, 795))  # shuffled, not the tail


def test_loaded_train_and_val_are_the_split_of_train_files(tree):
    train, val = load_nyuv2(tree, "train")["index"], load_nyuv2(tree, "val")["index"]
    split = split_train_val(range(N_TRAIN))
    assert torch.equal(train, split["train"]) and torch.equal(val, split["val"])
    manifest = nyuv2_manifest(tree)
    assert manifest["splits"] == {"train": 10, "val": 2, "test": N_TEST}
    assert manifest["split_seed"] == 0 and manifest["fingerprint"] == nyuv2_fingerprint(tree)


def test_the_fingerprint_changes_when_a_file_does(tree):
    before = nyuv2_fingerprint(tree)
    assert nyuv2_fingerprint(tree) == before
    path = tree / "val" / "depth" / "2.npy"
    np.save(path, np.ones((H, W, 1), dtype=np.float64))  # same shape, other size
    assert nyuv2_fingerprint(tree) != before


def test_the_root_comes_from_the_argument_or_the_environment(tree, tmp_path, monkeypatch):
    monkeypatch.delenv("NTLAB_NYUV2", raising=False)
    with pytest.raises(NtlabError, match="pass --root DIR or set NTLAB_NYUV2"):
        find_nyuv2()
    monkeypatch.setenv("NTLAB_NYUV2", str(tree))
    assert find_nyuv2() == tree
    assert load_nyuv2(None, "val")["image"].shape[0] == 2
    with pytest.raises(NtlabError, match="does not exist"):
        find_nyuv2(tmp_path / "nothing")
    (tmp_path / "half" / "train" / "image").mkdir(parents=True)
    with pytest.raises(NtlabError, match=r"no train/label/.*val/normal/; expected ROOT/"):
        find_nyuv2(tmp_path / "half")


def test_downscaling_keeps_invalid_pixels_invalid_and_labels_labels(tree):
    full, small = load_nyuv2(tree, "train"), load_nyuv2(tree, "train", size=(9, 12))
    assert small["image"].shape == (10, 3, 9, 12) and small["meta"]["size"] == [9, 12]
    assert small["segment"].shape == (10, 9, 12)
    assert set(small["segment"].unique().tolist()) <= set(range(-1, CLASSES))
    # depth: the top quarter (rows 0..8 of 36) has none, so rows 0..1 of 9 stay invalid, and
    # no zero is averaged in: every valid output lies within the valid inputs' range
    depth = small["depth"]
    assert (depth[:, :, :2] == 0).all() and (depth[:, :, 2:] > 0).all()
    valid = full["depth"][full["depth"] > 0]
    assert depth[depth > 0].min() >= valid.min() and depth.max() <= valid.max()
    normal = small["normal"]
    assert (normal[:, :, :, :3] == 0).all()  # the left quarter has no normals
    length = normal[:, :, :, 3:].norm(dim=1)
    assert torch.allclose(length, torch.ones_like(length), atol=1e-5)
    with pytest.raises(NtlabError, match="must downscale"):
        load_nyuv2(tree, "train", size=(72, 48))


def test_masked_downscaling_averages_valid_pixels_where_half_the_cell_is_valid():
    depth = torch.tensor([[[[2.0, 4.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])  # 1×1×2×4
    assert downscale_masked(depth, (1, 2), unit=False).tolist() == [[[[3.0, 0.0]]]]
    normal = torch.zeros(1, 3, 2, 2)
    normal[0, 0, 0, 0] = normal[0, 1, 0, 1] = 1.0  # two valid, orthogonal unit vectors
    out = downscale_masked(normal, (1, 1), unit=True)[0, :, 0, 0]
    assert torch.allclose(out, torch.tensor([0.5**0.5, 0.5**0.5, 0.0]))


def test_downscaling_the_image_averages_areas(tree):
    full, small = load_nyuv2(tree, "test"), load_nyuv2(tree, "test", size=(H // 2, W // 2))
    block = full["image"].double().reshape(N_TEST, 3, H // 2, 2, W // 2, 2).mean((3, 5))
    assert (small["image"].double() - block).abs().max() <= 0.5 + 1e-9


def test_check_reads_the_whole_tree_and_returns_its_manifest(tree):
    assert check_nyuv2(tree)["files"] == {"train": N_TRAIN, "val": N_TEST}


# --- one bad file of each kind: the error names its path -----------------------------------


def bad_value(modality: str, change):
    def write(root: Path) -> Path:
        path = root / "train" / modality / "5.npy"
        array = np.load(path)
        np.save(path, change(array))
        return path

    return write


def _nan_depth(a):
    a[H - 1, 2, 0] = np.nan
    return a


def _inf_normal(a):
    a[H - 1, W - 1, 1] = np.inf
    return a


def _half_label(a):
    a[3, 3] = 2.5
    return a


def _label_13(a):
    a[0, 0] = 13
    return a


def _negative_depth(a):
    a[H - 1, 0, 0] = -0.5
    return a


def _short_normals(a):
    return a * 0.5


def _missing(root: Path) -> Path:
    path = root / "train" / "depth" / "7.npy"
    path.unlink()
    return path


def _damaged(root: Path) -> Path:
    path = root / "val" / "normal" / "3.npy"
    path.write_bytes(path.read_bytes()[:200])  # cut short
    return path


def _not_npy(root: Path) -> Path:
    path = root / "train" / "image" / "4.npy"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not an array")
    return path


def _objects(root: Path) -> Path:
    path = root / "train" / "depth" / "2.npy"
    np.save(path, np.array([{"depth": 1}], dtype=object), allow_pickle=True)
    return path


def _wrong_shape(root: Path) -> Path:
    path = root / "train" / "normal" / "6.npy"
    np.save(path, np.zeros((H, W), dtype=np.float32))
    return path


def _other_size(root: Path) -> Path:
    path = root / "train" / "label" / "8.npy"
    np.save(path, np.zeros((H - 4, W), dtype=np.float32))
    return path


BAD = {
    "missing modality": (_missing, "is missing while .*train/image/7.npy exists"),
    "damaged": (_damaged, "not a readable .npy file"),
    "not npy": (_not_npy, r"not a .npy file \(no numpy header\)"),
    "objects": (_objects, "holds pickled objects, not an array"),
    "wrong shape": (_wrong_shape, r"shape \(36, 48\), expected H×W×3"),
    "other size": (_other_size, "32×48 pixels, but .*train/image/8.npy is 36×48"),
    "nan depth": (bad_value("depth", _nan_depth), r"1 non-finite value \(NaN or inf\)"),
    "inf normal": (bad_value("normal", _inf_normal), "1 non-finite value"),
    "fractional label": (bad_value("label", _half_label), "1 label not integer"),
    "label 13": (bad_value("label", _label_13), "expected classes 0..12 or -1"),
    "image 0..255": (bad_value("image", lambda a: a * 255), "expected floats in 0..1"),
    "negative depth": (bad_value("depth", _negative_depth), "negative depth"),
    "short normals": (bad_value("normal", _short_normals), "not unit vectors"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_file_fails_with_its_path(tree, case):
    damage, message = BAD[case]
    path = damage(tree)
    split = "test" if "val" in path.parts[-3] else None
    with pytest.raises(NtlabError) as error:
        check_nyuv2(tree)
    text = str(error.value)
    assert str(path) in text and re.search(message, text), text
    assert text.startswith(str(path))  # the bad file leads the message
    if split is None:  # the load of the split that holds it fails alike (train or val)
        index = int(path.stem)
        which = "train" if index in split_train_val(range(N_TRAIN))["train"] else "val"
        with pytest.raises(NtlabError, match=re.escape(str(path))):
            load_nyuv2(tree, which)
    else:
        with pytest.raises(NtlabError, match=re.escape(str(path))):
            load_nyuv2(tree, split)


def test_problems_are_counted_after_the_first(tree):
    for i in (1, 2, 3, 4, 5):
        path = tree / "val" / "depth" / f"{i}.npy"
        np.save(path, -np.ones((H, W, 1), dtype=np.float32))
    with pytest.raises(NtlabError) as error:
        load_nyuv2(tree, "test")
    text = str(error.value)
    assert text.startswith(f"{tree / 'val' / 'depth' / '1.npy'}: negative depth")
    assert (
        "(4 more: " in text
        and text.endswith("; …)")
        and str(tree / "val" / "depth" / "4.npy") in text
    )


def test_a_file_named_otherwise_is_refused(tree):
    path = tree / "train" / "image" / "7 (copy).npy"
    path.write_bytes((tree / "train" / "image" / "7.npy").read_bytes())
    with pytest.raises(NtlabError, match=re.escape(f"{path}: not named <integer>.npy")):
        load_nyuv2(tree, "train")
