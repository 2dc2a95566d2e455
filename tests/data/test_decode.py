"""The device decoder (`--decode gpu`): the workers read bytes and draw the crops, the
training device decodes and transforms. On the CPU device the same decoder must give the
worker path's crops bit for bit (both decode with libjpeg and transform with torchvision)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ntlab.config import TrainConfig, validate
from ntlab.data import get_benchmark
from ntlab.data.files import ImageFiles, labelled_chunks, take
from ntlab.data.sampler import BatchSource, seeded_generator
from ntlab.errors import NtlabError
from tests.imagetrees import imagelist_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imagelist_tree(tmp_path_factory.mktemp("office"))


def files(root: Path, decoder: str, workers: int = 0) -> ImageFiles:
    bench = get_benchmark("imagelist", root=str(root), image_size=32, workers=workers)
    x = bench.load(["amazon"])["amazon"].x("train")
    x.decoder = decoder
    return x


def test_read_then_decode_on_the_device_equals_the_worker_decode(tree: Path):
    index = torch.tensor([3, 0, 7, 12, 5])
    for augment in (True, False):
        plain = files(tree, "workers").decode(index, augment, seed=11)
        device = files(tree, "device")
        read = device.decode(index, augment, seed=11)
        assert read.encoded is not None and len(read.encoded.raw) == 5 and read.x.numel() == 0
        done = device.finish(read, torch.device("cpu"))
        assert torch.equal(done.x, plain.x) and torch.equal(done.ok, plain.ok)
        assert done.bad == [] and done.encoded is None


def test_batches_and_eval_chunks_through_the_device_decoder(tree: Path):
    for workers in (0, 1):  # in this process, and bytes sent by a loader process
        a, b = files(tree, "workers", workers), files(tree, "device", workers)
        y = torch.arange(len(a))
        ga, gb = seeded_generator(0, "t"), seeded_generator(0, "t")
        from ntlab.data.benchmark import TaskData

        src_a = BatchSource([TaskData("t", 7, {"train": (a, y)})], [0], 4, ga)
        src_b = BatchSource([TaskData("t", 7, {"train": (b, y)})], [0], 4, gb)
        for _ in range(3):
            xa, ya, _ = src_a.next()
            xb, yb, _ = src_b.next()
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        src_a.release()
        src_b.release()
        chunks_a = list(labelled_chunks(a, y, 8))
        chunks_b = list(labelled_chunks(b, y, 8))
        assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
                   for p, q in zip(chunks_a, chunks_b))  # fmt: skip
    index = torch.tensor([1, 2])
    assert torch.equal(take(a, index, torch.device("cpu")), take(b, index, torch.device("cpu")))


def test_a_file_that_does_not_decode_is_named(tree: Path, tmp_path: Path):
    root = imagelist_tree(tmp_path / "t")
    x = files(root, "device")
    bad = root / x.paths[2]
    bad.write_bytes(b"\xff\xd8 not really a jpeg")  # a JPEG's magic, then garbage
    (root / x.paths[4]).write_bytes(b"neither a jpeg nor anything else")
    (root / x.paths[5]).unlink()
    read = x.decode(torch.tensor([1, 2, 3, 4, 5]), True, seed=0)
    assert [pos for pos, _ in read.bad] == [4]  # the missing file: already when read
    done = x.finish(read, torch.device("cpu"))
    assert done.ok.tolist() == [0, 2] and len(done.x) == 2
    assert [pos for pos, _ in done.bad] == [1, 3, 4]
    with pytest.raises(NtlabError, match=r"cannot read image .*amazon.*: .*--skip-bad-images"):
        x.check((torch.tensor([1, 2, 3, 4, 5]), True, 0), done)


def test_decode_gpu_needs_a_cuda_training_and_an_image_list(tiny_digits, tree: Path):
    with pytest.raises(NtlabError, match="--decode gpu decodes the JPEGs on the training GPU"):
        validate(TrainConfig(target="amazon", benchmark="imagelist", root=str(tree),
                             decode="gpu", device="cpu"))  # fmt: skip
    with pytest.raises(NtlabError, match="--decode"):
        validate(TrainConfig(target="amazon", benchmark="imagelist", decode="nvjpeg"))
    with pytest.raises(NtlabError, match="--decode does not apply to digits"):
        get_benchmark("digits", decode="gpu")
    assert get_benchmark("imagelist", root=str(tree), decode="gpu").decoder == "device"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device")
def test_nvjpeg_crops_are_close_to_the_workers(tree: Path):
    """nvJPEG's IDCT and the GPU's resampling round differently from libjpeg on the CPU:
    the crops agree to a few grey levels, and the draws (box, flip) are the same."""
    index = torch.tensor([3, 0, 7, 12, 5])
    for augment in (True, False):
        plain = files(tree, "workers").decode(index, augment, seed=11)
        x = files(tree, "device")
        done = x.finish(x.decode(index, augment, seed=11), torch.device("cuda"))
        assert done.x.device.type == "cuda" and done.x.shape == plain.x.shape
        diff = (done.x.cpu().float() - plain.x.float()).abs()
        assert diff.mean() < 3 and torch.equal(done.ok, plain.ok)
