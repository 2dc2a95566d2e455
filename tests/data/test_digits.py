import json

import pytest
import torch

from ntlab.data import SPLITS, get_benchmark
from ntlab.data.digits import (
    DOMAINS,
    DigitsConfig,
    build_digits,
    build_permlo,
    digits_root,
    prepare_digits,
)
from ntlab.errors import NtlabError
from tests.conftest import TINY, TINY_TRAIN


@pytest.fixture(scope="module")
def built(fake_mnist):
    return build_digits(TINY, mnist_dir=fake_mnist[0], verify_mnist=False)


def test_every_domain_has_rgb_uint8_splits_of_the_configured_sizes(built):
    assert set(built) == set(DOMAINS)
    for name, splits in built.items():
        for split in SPLITS:
            x, y = splits[split]
            assert x.dtype == torch.uint8 and x.shape[1:] == (3, 16, 16), name
            assert y.dtype == torch.int64 and len(y) == len(x)
            assert 0 <= int(y.min()) and int(y.max()) <= 9
        assert len(splits["train"][1]) == TINY_TRAIN[name]
        assert len(splits["val"][1]) == TINY.val and len(splits["test"][1]) == TINY.test
        assert len(torch.unique(splits["test"][1])) == 10, f"{name} test split misses classes"


def test_the_build_is_deterministic_for_a_seed(built, fake_mnist):
    again = build_digits(TINY, mnist_dir=fake_mnist[0], verify_mnist=False)
    other = build_digits(DigitsConfig(**{**TINY.__dict__, "seed": 1}), fake_mnist[0], False)
    for name in DOMAINS:
        for split in SPLITS:
            assert torch.equal(built[name][split][0], again[name][split][0])
            assert torch.equal(built[name][split][1], again[name][split][1])
        assert not torch.equal(built[name]["train"][0], other[name]["train"][0]), name


def test_permlo_is_one_fixed_permutation_of_pixel_positions():
    n = 16 * 16
    hot = torch.eye(n).view(n, 1, 16, 16)  # image k: one white pixel at position k
    twice = torch.cat([hot, hot])
    out = build_permlo(TINY, {"test": (twice, torch.zeros(2 * n))})["test"][0]
    where = out[:, 0].flatten(1).argmax(1)
    assert torch.equal(where[:n], where[n:])  # the same permutation for every image
    assert sorted(where[:n].tolist()) == list(range(n))  # a bijection ...
    assert (where[:n] != torch.arange(n)).float().mean() > 0.9  # ... that moves the pixels
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])  # grey RGB


def test_prepare_is_idempotent_and_records_a_manifest(tiny_digits):
    root, built = prepare_digits(TINY, verify_mnist=False)
    assert root == digits_root() == tiny_digits and built is False
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["fingerprint"] == TINY.fingerprint()
    kinds = {d: manifest["domains"][d]["kind"] for d in DOMAINS}
    assert [d for d, k in kinds.items() if k == "real"] == ["mnist", "optdigits"]


def test_load_returns_only_the_tasks_asked_for(tiny_digits):
    data = get_benchmark("digits").load(["syn", "mnist"])
    assert list(data) == ["syn", "mnist"]
    assert data["syn"].size("train") == TINY_TRAIN["syn"]


def test_unprepared_data_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("NTLAB_HOME", str(tmp_path))
    with pytest.raises(NtlabError, match="ntlab data prepare digits"):
        get_benchmark("digits").load(["mnist"])


@pytest.mark.parametrize(
    "cfg, match",
    [
        (DigitsConfig(size=4), "--size"),
        (DigitsConfig(train={"mnist": 5}), "at least 10"),
        (DigitsConfig(train={"nope": 50}), "unknown digits domain"),
    ],
)
def test_bad_build_options_are_rejected(cfg, match):
    with pytest.raises(NtlabError, match=match):
        cfg.validate()


def test_asking_for_more_mnist_than_exists_is_a_clear_error(fake_mnist):
    big = DigitsConfig(train={**TINY_TRAIN, "permlo": 5000}, val=50, test=60)
    with pytest.raises(NtlabError, match="lower --train"):
        build_digits(big, mnist_dir=fake_mnist[0], verify_mnist=False)
