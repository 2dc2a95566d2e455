"""Image lists (DomainNet's layout): reading, checking and the val split, with errors that
name the file and line."""

from __future__ import annotations

import pytest
import torch

from ntlab.data.imagelist import (
    DOMAINNET_CLASSES,
    DOMAINNET_DOMAINS,
    check_root,
    count_classes,
    read_domain,
    read_list,
    resolve_domains,
    split_val_from_test,
)
from ntlab.errors import NtlabError


def write_lists(root, domain, splits):
    (root / "image_list").mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        (root / "image_list" / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")


def test_a_list_keeps_paths_with_spaces_and_the_last_token_as_label(tmp_path):
    write_lists(tmp_path, "real", {"train": ["real/a b/1.jpg 3", "", "real/c/2.jpg\t344"]})
    lst = read_list(tmp_path / "image_list" / "real_train.txt", DOMAINNET_CLASSES)
    assert lst.images == ("real/a b/1.jpg", "real/c/2.jpg")
    assert lst.labels.tolist() == [3, 344]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["real/a.jpg 1", "real/b.jpg"], "real_train.txt:2: no label after the image path"),
        (["real/a.jpg one"], "real_train.txt:1: the label 'one' is not an integer"),
        (["real/a.jpg 345"], "real_train.txt:1: label 345 is out of range (0..344)"),
        (["real/a.jpg -1"], "real_train.txt:1: label -1 is out of range"),
        ([""], "is empty"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, lines, message):
    write_lists(tmp_path, "real", {"train": lines})
    with pytest.raises(NtlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_list(tmp_path / "image_list" / "real_train.txt", DOMAINNET_CLASSES)


def test_a_missing_root_or_list_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NTLAB_DOMAINNET", raising=False)
    with pytest.raises(NtlabError, match="pass --root DIR or set NTLAB_DOMAINNET"):
        check_root(None)
    with pytest.raises(NtlabError, match="does not exist"):
        check_root(tmp_path / "nothing")
    with pytest.raises(NtlabError, match="no image_list/ folder"):
        check_root(tmp_path)
    write_lists(tmp_path, "real", {"train": ["real/a.jpg 0"]})
    monkeypatch.setenv("NTLAB_DOMAINNET", str(tmp_path))
    assert check_root(None) == tmp_path
    with pytest.raises(NtlabError, match="real_test.txt does not exist"):
        read_domain(tmp_path, "real", DOMAINNET_CLASSES)


def test_one_letter_aliases_and_unknown_domains():
    assert resolve_domains(["c", "r", "sketch"], DOMAINNET_DOMAINS) == ["clipart", "real", "sketch"]
    with pytest.raises(NtlabError, match="unknown domain 'x'"):
        resolve_domains(["x"], DOMAINNET_DOMAINS)
    with pytest.raises(NtlabError, match="listed twice"):
        resolve_domains(["r", "real"], DOMAINNET_DOMAINS)


def test_val_is_half_of_test_with_a_fixed_seed_when_there_is_no_val_list(tmp_path):
    test = [f"real/{i}.jpg {i % 7}" for i in range(101)]
    write_lists(tmp_path, "real", {"train": ["real/t.jpg 0"], "test": test})
    first = read_domain(tmp_path, "real", 7)
    again = read_domain(tmp_path, "real", 7)
    assert first["val_source"].startswith("test split 50/50")
    val, rest = first["val"], first["test"]
    assert len(val) == 50 and len(rest) == 51
    assert set(val.images).isdisjoint(rest.images)
    assert set(val.images) | set(rest.images) == {line.rsplit(" ", 1)[0] for line in test}
    assert val.images == again["val"].images  # the same split every time
    for part in (val, rest):  # labels travel with their images
        assert all(
            int(p.split("/")[1].split(".")[0]) % 7 == y
            for p, y in zip(part.images, part.labels.tolist())
        )  # noqa: E501


def test_a_val_list_is_used_when_present(tmp_path):
    write_lists(
        tmp_path, "art", {"train": ["art/a.jpg 0"], "val": ["art/v.jpg 1"], "test": ["art/t.jpg 6"]}
    )  # noqa: E501
    domain = read_domain(tmp_path, "art")
    assert domain["val_source"] == "list" and domain["val"].images == ("art/v.jpg",)
    assert count_classes([domain["train"], domain["val"], domain["test"]]) == 7


def test_split_is_a_partition():
    from ntlab.data.imagelist import ImageList

    lst = ImageList(
        __import__("pathlib").Path("x"),
        tuple(str(i) for i in range(10)),
        torch.arange(10),
        tuple(range(1, 11)),
    )
    parts = split_val_from_test(lst, seed=3)
    assert sorted(parts["val"].labels.tolist() + parts["test"].labels.tolist()) == list(range(10))
    # each image keeps the line that named it in the test list
    for part in parts.values():
        assert part.path == lst.path
        assert [int(i) + 1 for i in part.images] == list(part.lines)


def test_a_list_is_parsed_once_while_its_file_is_unchanged(tmp_path):
    from ntlab.data.imagelist import read_list

    path = tmp_path / "d_train.txt"
    path.write_text("a.jpg 0\nb.jpg 1\n")
    first = read_list(path, 5)
    assert read_list(path, 5) is first  # cached
    path.write_text("a.jpg 0\nb.jpg 1\nc.jpg 2\n")
    again = read_list(path, 5)
    assert again is not first and again.images == ("a.jpg", "b.jpg", "c.jpg")
