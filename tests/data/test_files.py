"""Images on disk: decoding, the paper's transforms, seeded crops, batches, bad files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ntlab.data import get_benchmark
from ntlab.data.files import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFiles,
    crop_box,
    labelled_chunks,
    normalise,
)
from ntlab.data.sampler import BatchSource, seeded_generator
from ntlab.errors import NtlabError
from tests.imagetrees import OFFICE_CLASSES, imagelist_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imagelist_tree(tmp_path_factory.mktemp("office"))


def load(root: Path, **options):
    bench = get_benchmark("imagelist", root=str(root), image_size=32, workers=0, **options)
    return bench, bench.load(bench.tasks())


def test_benchmark_reads_domains_classes_and_splits(tree: Path):
    bench, data = load(tree)
    assert bench.tasks() == ["amazon", "dslr", "webcam"]
    amazon = data["amazon"]
    assert amazon.num_classes == len(OFFICE_CLASSES) == 7
    # no val list: the 14 test images are split 7/7
    assert (amazon.size("train"), amazon.size("val"), amazon.size("test")) == (21, 7, 7)
    assert isinstance(amazon.x("train"), ImageFiles) and amazon.x("train").shape == (21, 3, 32, 32)
    record = bench.fingerprint()
    assert record["val_split"]["amazon"] == "test split 50/50, seed 0"
    assert record["classes"] == 7


def test_fingerprint_follows_the_lists(tmp_path: Path):
    root = imagelist_tree(tmp_path / "t")
    before = get_benchmark("imagelist", root=str(root)).fingerprint()["lists_sha256"]
    lst = root / "image_list" / "dslr_train.txt"
    lst.write_text("\n".join(lst.read_text().splitlines()[:-1]) + "\n")
    assert get_benchmark("imagelist", root=str(root)).fingerprint()["lists_sha256"] != before


def test_eval_transform_is_resize_then_centre_crop(tree: Path):
    """Decoded eval images equal torchvision's own Resize(256-equivalent) + CenterCrop."""
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as TF

    _, data = load(tree)
    files = data["dslr"].x("test")
    out = files.decode(torch.tensor([0, 3]), augment=False, seed=0)
    for row, i in enumerate([0, 3]):
        img = decode_image(read_file(str(files.root / files.paths[i])), mode=ImageReadMode.RGB)
        expected = TF.center_crop(TF.resize(img, [37, 37], antialias=True), [32, 32])
        assert torch.equal(out.x[row], expected)
    assert out.x.dtype == torch.uint8


def test_normalise_uses_imagenet_statistics():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    got = normalise(x)[0, :, 0, 0]
    want = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(got, want)


def test_crop_box_is_seeded_and_within_torchvision_bounds():
    boxes = [crop_box(37, 37, torch.Generator().manual_seed(s)) for s in range(200)]
    assert boxes == [crop_box(37, 37, torch.Generator().manual_seed(s)) for s in range(200)]
    for top, left, h, w in boxes:
        assert 0 <= top <= 37 - h and 0 <= left <= 37 - w
        area = h * w / 37**2
        if (h, w) != (37, 37):  # the fallback is the whole image
            assert 0.08 * 0.8 <= area <= 1.0
            assert math.log(3 / 4) - 0.2 <= math.log(w / h) <= math.log(4 / 3) + 0.2
    assert len(set(boxes)) > 150  # random


def test_training_batches_do_not_depend_on_the_number_of_workers(tree: Path):
    """The same seed gives the same images, crops and flips with 0 or 2 loader processes."""

    def batches(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        bench = get_benchmark("imagelist", root=str(tree), image_size=32, workers=workers)
        data = bench.load(["amazon", "webcam"])
        src = BatchSource([data["amazon"], data["webcam"]], [0, 1], 8, seeded_generator(0, "mix"))
        return [src.next() for _ in range(7)]  # crosses an epoch (42 images, 8 per batch)

    a, b = batches(0), batches(2)
    for (xa, ya, ha), (xb, yb, hb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ha, hb)
    assert xa.dtype == torch.float32 and xa.shape == (8, 3, 32, 32)
    assert not torch.equal(a[0][0], a[1][0])


def test_a_fork_and_a_checkpoint_continue_the_same_stream(tree: Path):
    _, data = load(tree)
    src = BatchSource([data["dslr"]], [0], 5, seeded_generator(1, "dslr"))
    src.next(), src.next()
    twin, saved = src.fork(), src.state_dict()
    expected = [src.next() for _ in range(3)]
    resumed = BatchSource([data["dslr"]], [0], 5, seeded_generator(1, "dslr"))
    resumed.load_state_dict(saved)
    for other in (twin, resumed):
        for (x, y, _), (ex, ey, _) in zip([other.next() for _ in range(3)], expected):
            assert torch.equal(x, ex) and torch.equal(y, ey)


def test_eval_chunks_are_the_same_from_the_memory_cache(tree: Path):
    _, data = load(tree)
    files, y = data["webcam"].x("test"), data["webcam"].y("test")
    first = list(labelled_chunks(files, y, 3))
    assert files._eval_cache is not None  # small: kept after the first pass
    second = list(labelled_chunks(files, y, 3))
    assert [len(c[1]) for c in first] == [3, 3, 1]
    for (xa, ya), (xb, yb) in zip(first, second):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def broken_tree(tmp_path: Path) -> Path:
    root = imagelist_tree(tmp_path / "bad")
    lines = (root / "image_list" / "amazon_train.txt").read_text().splitlines()
    (root / lines[1].rsplit(maxsplit=1)[0]).unlink()  # line 2: missing
    (root / lines[4].rsplit(maxsplit=1)[0]).write_bytes(b"not a jpeg")  # line 5: undecodable
    return root


def test_an_unreadable_image_fails_with_its_path_and_list_line(tmp_path: Path):
    root = broken_tree(tmp_path)
    _, data = load(root)
    src = BatchSource([data["amazon"]], [0], 21, seeded_generator(0, "a"))
    with pytest.raises(NtlabError) as err:
        src.next()
    text = str(err.value)
    assert "amazon_train.txt:2" in text or "amazon_train.txt:5" in text
    assert "--skip-bad-images" in text and "\n" not in text


def test_skip_bad_images_leaves_them_out_and_counts_them(tmp_path: Path, capsys):
    root = broken_tree(tmp_path)
    bench, data = load(root, skip_bad_images=True)
    src = BatchSource([data["amazon"]], [0], 21, seeded_generator(0, "a"))
    x, y, _ = src.next()
    assert len(x) == len(y) == 19
    summary = bench.skipped()
    assert summary["skipped_images"] == 2
    assert any("amazon_train.txt:2" in e for e in summary["skipped_examples"])
    assert any("amazon_train.txt:5" in e for e in summary["skipped_examples"])
    src.next()  # a second epoch warns no more
    err = capsys.readouterr().err
    assert err.count("warning: skipping unreadable image") == 2
    assert "no such file" in err and "Unsupported image file" in err


def test_data_options_a_benchmark_does_not_take_are_refused():
    with pytest.raises(NtlabError, match="--root does not apply to digits"):
        get_benchmark("digits", root="/tmp")
    with pytest.raises(NtlabError, match="--domains does not apply to domainnet"):
        get_benchmark("domainnet", domains=["c"])
    with pytest.raises(NtlabError, match="--image-size must be at least 32"):
        get_benchmark("imagelist", image_size=8)


def test_training_in_chunks_releases_loaders_and_keeps_the_stream(tree: Path):
    """Sources training together split --workers; each train() call stops its loaders at the
    end, and 2 + 2 steps give the parameters of 4 steps in one call."""
    from ntlab.core.state import OptimConfig, TrainState
    from ntlab.core.train import LossTerm, attach_sources, train
    from ntlab.models import BACKBONES, MultiTaskModel

    def trained(chunks: list[int]) -> tuple[TrainState, list[int | None]]:
        bench = get_benchmark("imagelist", root=str(tree), image_size=32, workers=2)
        data = bench.load(["amazon", "dslr"])
        torch.manual_seed(0)
        model = MultiTaskModel(BACKBONES.get("resnet18")(), {"amazon": 7, "dslr": 7})
        state = TrainState.create(model, OptimConfig("sgd", 0.01), sum(chunks))
        terms = [LossTerm("amazon", ("amazon",), 1.0), LossTerm("dslr", ("dslr",), 1.0)]
        attach_sources(state, terms, data, 4, 0)
        for steps in chunks:
            train(state, terms, steps)
            assert all(src._stream is None for src in state.sources.values())
        return state, [src.workers for src in state.sources.values()]

    (a, shares), (b, _) = trained([2, 2]), trained([4])
    assert shares == [1, 1]  # 2 workers split between 2 image-list terms
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name
