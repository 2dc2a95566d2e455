import json

import numpy as np
import pytest
import torch

from ntlab.data import scenes
from ntlab.data.mnist import load_mnist
from ntlab.data.scenes import BACKGROUND, ScenesConfig, build_scenes, prepare_scenes

TINY_SCENES = ScenesConfig(seed=0, size=16, train=12, val=4, test=6)


@pytest.fixture(scope="module")
def mnist(fake_mnist, tmp_path_factory):
    x, y, _, _ = load_mnist(fake_mnist[0], tmp_path_factory.mktemp("dl"), verify=False)
    return x, y


@pytest.fixture(scope="module")
def built(mnist):
    return build_scenes(*mnist, n=24, size=32, seed=0)


def _owners(out):
    """For each pixel, the slot (0..2, or 3: the background) whose plane gives its depth,
    found from the depth map alone (the depth bands do not meet)."""
    n, _, s, _ = out["depth"].shape
    r = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    x, y = r[None, :], r[:, None]
    a, b, c = (out["planes"][..., i, None, None] for i in range(3))
    z = a + b * x + c * y  # [n, 4, s, s]: every plane's depth at every pixel
    gap = (z - out["depth"]).abs()
    return gap.argmin(1), gap.min(1).values, z, x, y


def test_shapes_and_dtypes(built):
    n, s = 24, 32
    want = {
        "image": (torch.uint8, (n, 3, s, s)),
        "segment": (torch.int64, (n, s, s)),
        "depth": (torch.float32, (n, 1, s, s)),
        "normal": (torch.float32, (n, 3, s, s)),
        "owner": (torch.uint8, (n, s, s)),
        "labels": (torch.int64, (n, 3)),
        "boxes": (torch.float32, (n, 3, 3)),
        "planes": (torch.float32, (n, 4, 3)),
    }
    assert {k: (v.dtype, tuple(v.shape)) for k, v in built.items()} == want


def test_the_same_seed_gives_identical_tensors_and_another_seed_others(mnist, built):
    again = build_scenes(*mnist, n=24, size=32, seed=0)
    assert all(torch.equal(built[k], again[k]) for k in built)
    other = build_scenes(*mnist, n=24, size=32, seed=1)
    assert not torch.equal(built["image"], other["image"])
    assert not torch.equal(built["segment"], other["segment"])


def test_each_image_holds_one_to_three_digits_of_the_given_labels(mnist, built):
    labels = built["labels"]
    drawn = (labels >= 0).sum(1)
    assert drawn.min() >= 1 and drawn.max() <= 3
    assert set(labels[labels >= 0].tolist()) <= set(np.unique(mnist[1]).tolist())
    assert len(set(drawn.tolist())) == 3  # 24 images: every count occurs


def test_segment_classes_match_the_digits_drawn_where_they_were_drawn(built):
    seg = built["segment"]
    assert seg.min() >= 0 and seg.max() <= BACKGROUND
    owner, gap, _, x, y = _owners(built)
    assert gap.max() < 1e-4  # every pixel's depth is one of the scene's planes
    assert torch.equal(owner, built["owner"].long())
    assert torch.equal(owner == 3, seg == BACKGROUND)
    slot_class = torch.cat([built["labels"], torch.full((len(seg), 1), BACKGROUND)], 1)
    assert torch.equal(slot_class.gather(1, owner.flatten(1)).view_as(seg), seg)
    # a digit's pixels lie inside the box it was drawn in
    left, top, side = (built["boxes"][..., i] for i in range(3))
    for k in range(3):
        inside = (
            (x >= left[:, k, None, None])
            & (x <= (left + side)[:, k, None, None])
            & (y >= top[:, k, None, None])
            & (y <= (top + side)[:, k, None, None])
        )
        assert not ((owner == k) & ~inside).any()
    # the front-most digit of every image is visible, with its own class
    front = (built["labels"] >= 0).int().argmax(1)
    seen = (owner == front[:, None, None]).flatten(1).any(1)
    assert seen.all()


def test_the_front_most_digit_owns_the_pixels_where_digits_overlap():
    # solid "digits" cover their whole box, so who covers a pixel is known by hand
    solid = torch.full((10, 28, 28), 255, dtype=torch.uint8)
    out = build_scenes(solid, torch.arange(10), n=48, size=32, seed=3)
    s, labels = 32, out["labels"]
    r = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    x, y = r[None, None, :], r[None, :, None]
    left, top, side = (out["boxes"][..., i, None, None] for i in range(3))

    def inside(margin):  # [n, 3, s, s]: pixel centres inside each drawn box ± margin
        return (
            (x > left + margin)
            & (x < left + side - margin)
            & (y > top + margin)
            & (y < top + side - margin)
            & (labels >= 0)[..., None, None]
        )

    surely_in, maybe_in = inside(1 / s), inside(-1 / s)
    checked = 0
    for k in range(3):
        # inside box k and surely outside every box in front of it: the class of slot k
        mine = surely_in[:, k] & ~maybe_in[:, :k].any(1)
        want = labels[:, k, None, None].expand_as(mine)
        assert torch.equal(out["segment"][mine], want[mine])
        checked += int((mine & maybe_in[:, k + 1 :].any(1)).sum())  # overlaps a digit behind
    assert checked > 0
    outside = ~maybe_in.any(1)
    assert (out["segment"][outside] == BACKGROUND).all()


def test_depth_is_positive_and_every_digit_is_in_front_of_the_background(built):
    depth = built["depth"][:, 0]
    assert depth.min() > 0
    owner, _, z, _, _ = _owners(built)
    on_digit = owner < 3
    assert on_digit.any()
    assert (depth[on_digit] < z[:, 3][on_digit]).all()
    # and in front of every digit drawn behind it
    for k in range(2):
        behind = built["labels"][:, k + 1 :] >= 0
        for j in range(k + 1, 3):
            mask = (owner == k) & behind[:, j - k - 1, None, None]
            assert (depth[mask] < z[:, j][mask]).all()


def test_normals_are_unit_and_the_planes_analytic_normals(built):
    normal = built["normal"]
    assert torch.allclose(normal.norm(dim=1), torch.ones(1), atol=1e-5)
    owner, _, _, _, _ = _owners(built)
    i, r, c = (t[0] for t in torch.nonzero(owner == 0, as_tuple=True))
    _, b, cc = built["planes"][i, 0].tolist()
    want = torch.tensor([b, cc, -1.0]) / (b * b + cc * cc + 1) ** 0.5  # facing the camera
    assert torch.allclose(normal[i, :, r, c], want, atol=1e-6)
    _, b, cc = built["planes"][i, 3].tolist()
    bg = torch.nonzero(owner[i] == 3)[0]
    want = torch.tensor([b, cc, -1.0]) / (b * b + cc * cc + 1) ** 0.5
    assert torch.allclose(normal[i, :, bg[0], bg[1]], want, atol=1e-6)
    assert (normal[:, 2] < 0).all()


def test_build_refuses_images_that_are_not_mnist_shaped():
    with pytest.raises(scenes.NtlabError, match="28, 28"):
        build_scenes(torch.zeros(3, 16, 16, dtype=torch.uint8), torch.zeros(3), n=2)


def test_prepare_writes_the_splits_and_a_manifest_and_reuses_them(
    fake_mnist, monkeypatch, tmp_path
):
    monkeypatch.setenv("NTLAB_HOME", str(tmp_path))
    root = prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False)
    assert root == tmp_path / "datasets" / "scenes"
    assert sorted(p.name for p in root.iterdir()) == [
        "manifest.json",
        "test.pt",
        "train.pt",
        "val.pt",
    ]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config"] == {
        "seed": 0,
        "size": 16,
        "train": 12,
        "val": 4,
        "test": 6,
        "segment_labels": 200,
    }
    assert manifest["segment_labelled"] == 12  # all of a 12-image train split
    assert {s: e["images"] for s, e in manifest["splits"].items()} == {
        "train": 12,
        "val": 4,
        "test": 6,
    }
    train = scenes.load_scenes_split(root / "train.pt")
    pools = scenes._mnist_pools(TINY_SCENES, load_mnist(fake_mnist[0], tmp_path, verify=False))
    want = build_scenes(*pools["train"], n=12, size=16, seed=0, stream="scenes-train")
    assert list(train) == list(want)
    assert all(torch.equal(train[k], want[k]) for k in want)  # the targets exactly as built
    stamp = (root / "train.pt").stat().st_mtime_ns
    assert prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False) == root
    assert (root / "train.pt").stat().st_mtime_ns == stamp  # the same config is not rebuilt
    prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False, force=True)
    again = json.loads((root / "manifest.json").read_text())
    assert again["fingerprint"] == manifest["fingerprint"]  # the content is deterministic
    other = ScenesConfig(**{**TINY_SCENES.__dict__, "seed": 1})
    prepare_scenes(other, mnist_dir=fake_mnist[0], verify_mnist=False)
    assert json.loads((root / "manifest.json").read_text())["fingerprint"] != again["fingerprint"]


def test_a_build_failing_midway_leaves_no_partial_files(fake_mnist, monkeypatch, tmp_path):
    monkeypatch.setenv("NTLAB_HOME", str(tmp_path))
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the train split is written, the val split fails
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False)
    datasets = tmp_path / "datasets"
    assert list(datasets.iterdir()) == []  # neither a scenes folder nor a temporary one

    monkeypatch.setattr(torch, "save", real_save)
    root = prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    calls.clear()
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False, force=True)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before  # the old build stands
    assert [p.name for p in datasets.iterdir()] == ["scenes"]


def test_a_damaged_split_file_is_named(fake_mnist, monkeypatch, tmp_path):
    monkeypatch.setenv("NTLAB_HOME", str(tmp_path))
    root = prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False)
    (root / "val.pt").write_bytes((root / "val.pt").read_bytes()[:100])
    with pytest.raises(scenes.NtlabError, match="val.pt is damaged"):
        scenes.load_scenes_split(root / "val.pt")
    stamp = (root / "train.pt").stat().st_mtime_ns
    prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False)  # rebuilt
    assert (root / "train.pt").stat().st_mtime_ns != stamp
    assert len(scenes.load_scenes_split(root / "val.pt")["image"]) == 4


def test_the_targets_feed_the_dense_metrics_and_losses(built):
    from ntlab import dense_metrics as dm

    seg = dm.SegmentationMeter(scenes.CLASSES)
    seg.update(built["segment"], built["segment"])
    assert seg.compute() == {"miou": 1.0, "pixel_acc": 1.0}
    assert dm.depth_errors(built["depth"], built["depth"]) == {"abs_err": 0.0, "rel_err": 0.0}
    angles = dm.normal_angles(built["normal"], built["normal"])
    assert len(angles) == built["segment"].numel() and angles.max() < 1e-3
    flat = torch.zeros_like(built["normal"])
    flat[:, 2] = -1  # every surface facing the camera: off by each plane's tilt
    assert dm.normal_summary(dm.normal_angles(flat, built["normal"]))["mean_angle"] > 1
    logits = torch.nn.functional.one_hot(built["segment"], scenes.CLASSES).permute(0, 3, 1, 2)
    assert float(dm.segmentation_loss(logits.float() * 20, built["segment"])) < 1e-6


def test_a_config_out_of_range_is_refused():
    with pytest.raises(scenes.NtlabError, match="16 to 64"):
        ScenesConfig(size=8).validate()
    with pytest.raises(scenes.NtlabError, match="val split"):
        ScenesConfig(val=0).validate()
    with pytest.raises(scenes.NtlabError, match="--segment-labels must be at least 1"):
        ScenesConfig(segment_labels=0).validate()


def test_segment_is_labelled_on_a_prefix_of_the_shared_training_images(
    fake_mnist, monkeypatch, tmp_path
):
    """`segment` trains on the first `segment_labels` training canvases, depth and normal
    on all of them, and every task is evaluated on the whole val and test splits; the
    number is part of the data's fingerprint, so runs of another labelling are not reused."""
    from ntlab.data.dense import ScenesBenchmark

    monkeypatch.setenv("NTLAB_HOME", str(tmp_path))
    prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False)
    full = ScenesBenchmark()
    all_labels = full.fingerprint()
    cfg = ScenesConfig(**{**TINY_SCENES.__dict__, "segment_labels": 5})
    prepare_scenes(cfg, mnist_dir=fake_mnist[0], verify_mnist=False)
    bench = ScenesBenchmark()
    assert bench.fingerprint() != all_labels
    data = bench.load(["segment", "depth", "normal"])
    seg, depth, normal = data["segment"], data["depth"], data["normal"]
    assert (seg.size("train"), depth.size("train"), normal.size("train")) == (5, 12, 12)
    assert seg.x("train").shape[0] == 5
    assert torch.equal(seg.x("train"), depth.x("train")[:5])  # the same images, a prefix
    assert seg.x("train").data_ptr() == depth.x("train").data_ptr()  # shared, not copied
    built_train = scenes.load_scenes_split(bench.root / "train.pt")
    assert torch.equal(seg.y("train"), built_train["segment"][:5])
    for split, n in (("val", 4), ("test", 6)):
        assert seg.size(split) == depth.size(split) == n
    assert bench.load(["depth"])["depth"].size("train") == 12
    rows = {row["task"]: row["splits"] for row in bench.describe()}
    assert rows["segment"] == {"train": 5, "val": 4, "test": 6}
    assert rows["depth"] == {"train": 12, "val": 4, "test": 6}


def test_a_build_of_another_format_is_refused_with_the_fix(fake_mnist, monkeypatch, tmp_path):
    from ntlab.data.dense import ScenesBenchmark

    monkeypatch.setenv("NTLAB_HOME", str(tmp_path))
    root = prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "format": 2}))
    with pytest.raises(scenes.NtlabError, match="format 2.*ntlab data prepare scenes"):
        ScenesBenchmark().load(["segment"])
    (root / "manifest.json").write_text(json.dumps({**manifest, "segment_labelled": "all"}))
    with pytest.raises(scenes.NtlabError, match="manifest.json is damaged.*--force"):
        ScenesBenchmark().load(["segment"])
    prepare_scenes(TINY_SCENES, mnist_dir=fake_mnist[0], verify_mnist=False)  # rebuilt
    assert ScenesBenchmark().load(["segment"])["segment"].size("train") == 12


def test_the_segment_loss_weighs_a_missed_digit_pixel_above_a_missed_background_pixel():
    """Most pixels are background: the scenes' segment loss weighs them down, so that
    predicting the background everywhere is not what a short training settles on."""
    from ntlab.data.dense import ScenesBenchmark

    loss = ScenesBenchmark().specs()["segment"].loss
    target = torch.full((1, 4, 4), BACKGROUND)
    target[0, 0, 0] = 3
    right = torch.full((1, 11, 4, 4), -10.0).scatter(1, target[:, None], 10.0)
    miss_digit = right.clone()
    miss_digit[0, :, 0, 0] = right[0, :, 1, 1]  # the digit pixel called background
    miss_background = right.clone()
    miss_background[0, :, 1, 1] = right[0, :, 0, 0]  # a background pixel called a 3
    assert loss(miss_digit, target) > 5 * loss(miss_background, target)


def test_data_prepare_scenes_takes_the_number_of_segment_labels(fake_mnist, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from ntlab.cli import app

    monkeypatch.setenv("NTLAB_HOME", str(tmp_path))
    runner = CliRunner()
    base = ["data", "prepare", "scenes", "--mnist-dir", str(fake_mnist[0]), "--no-verify"]
    base += ["--train", "10", "--val", "4", "--test", "4"]
    result = runner.invoke(app, [*base, "--segment-labels", "3"])
    assert result.exit_code == 0, result.output
    assert "segment labelled on 3 of 10 training images" in result.output
    manifest = json.loads((tmp_path / "datasets/scenes/manifest.json").read_text())
    assert manifest["segment_labelled"] == 3 and manifest["config"]["segment_labels"] == 3
    for args, message in (
        ([*base, "--segment-labels", "0"], "--segment-labels must be at least 1"),
        (["data", "prepare", "digits", "--segment-labels", "5"], "applies to scenes only"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
