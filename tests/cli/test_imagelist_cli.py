"""Every data-path command end to end on image lists, with resnet18 on the CPU.

Two trees are generated once: a DomainNet-shaped one (six domains, 345-class labels, the
real list format) and an Office-style `imagelist` one (three domains, seven classes). The
images are small and cropped to 32 px so that a step of resnet18 takes milliseconds.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ntlab.cli import app
from tests.imagetrees import domainnet_tree, imagelist_tree
from tests.report_checks import check_report

runner = CliRunner()
FAST = ("--backbone", "resnet18", "--image-size", "32", "--batch-size", "4", "--workers", "0")
FAST += ("--eval-every", "2", "--quiet")


@pytest.fixture(scope="module")
def dn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return domainnet_tree(tmp_path_factory.mktemp("domainnet"))


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imagelist_tree(tmp_path_factory.mktemp("office"))


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def cli(text: str):
    """A command line (paths without spaces) with the fast options added."""
    return invoke(*shlex.split(text), *FAST)


def ok(result) -> None:
    assert result.exit_code == 0, result.output + repr(result.exception)


def results(out: Path) -> dict:
    assert json.loads((out / "status.json").read_text())["state"] == "completed"
    return json.loads((out / "results.json").read_text())


def finite(*values: float) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) and 0 <= v <= 100 for v in values)


# --- DomainNet ---------------------------------------------------------------------------


def test_domainnet_train(dn: Path, tmp_path: Path):
    out = tmp_path / "train"
    args = ("train", "--benchmark", "domainnet", "--root", dn, "-t", "c", "--aux", "p,r")
    ok(invoke(*args, "--method", "ew", *FAST, "--steps", "4", "--out", out))
    res = results(out)
    assert res["target"] == "clipart" and res["aux"] == ["painting", "real"]  # aliases
    assert finite(res["test_score"], res["val_score"], res["stl"]["test_score"])
    assert res["skipped_images"] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["root"] == str(dn) and config["train"]["image_size"] == 32
    assert config["data"]["classes"] == 345
    assert config["data"]["val_split"]["clipart"] == "test split 50/50, seed 0"
    assert config["data"]["val_split"]["real"] == "list"
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics["task"]) >= {"clipart", "painting", "real"}
    check_report(
        out / "report.html",
        texts=("clipart", "345 classes", "val: list; test split 50/50, seed 0"),
    )


def test_domainnet_forkmerge_train(dn: Path, tmp_path: Path):
    out = tmp_path / "fm"
    ok(
        cli(
            f"forkmerge train --benchmark domainnet --root {dn} -t s --aux "
            f"q,i --branches per-task --steps 4 --merge-every 2 --out {out}"
        )
    )
    res = results(out)
    assert res["target"] == "sketch" and res["rounds"] == 2
    assert len(res["lambda_per_round"]) == 2
    for weights in res["lambda_per_round"]:
        assert len(weights) == 3 and sum(weights) == pytest.approx(1.0)  # per-task branches
    assert finite(res["test_score"])
    assert (out / "merges.csv").is_file()
    assert len(pd.read_csv(out / "merges.csv")) == 2 * 3


def test_domainnet_pairwise(dn: Path, tmp_path: Path):
    out = tmp_path / "pw"
    ok(cli(f"pairwise --benchmark domainnet --root {dn} --domains c,p,r --steps 3 --out {out}"))
    results(out)
    cells = pd.read_csv(out / "pairwise.csv")
    assert len(cells) == 6  # ordered pairs of three domains
    assert set(cells["target"]) == {"clipart", "painting", "real"}
    assert (cells["tg"] == cells["score"] - cells["stl_score"]).all()
    check_report(out / "report.html", figures=1)


def test_domainnet_gcs(dn: Path, tmp_path: Path):
    out = tmp_path / "gcs"
    ok(
        cli(
            f"gcs --benchmark domainnet --root {dn} -t r --aux c --pretrain-steps "
            f"3 --batches 3 --probe-steps 2 --out {out}"
        )
    )
    res = results(out)
    assert res["batches"] == 3 and -1 <= res["mean_gcs"] <= 1
    table = pd.read_csv(out / "gcs.csv")
    assert len(table) == 3 * 6  # batches × λ
    assert table.loc[table["lam"] == 0, "tg"].eq(0).all()


# --- an Office-style image list ----------------------------------------------------------


def test_imagelist_train_with_the_paper_preset(office: Path, tmp_path: Path):
    out = tmp_path / "train"
    ok(
        cli(
            f"train --benchmark imagelist --root {office} --domains amazon,dslr,webcam "
            f"-t dslr --method ew --preset paper --steps 3 --out {out}"
        )
    )
    res = results(out)
    assert res["aux"] == ["amazon", "webcam"] and finite(res["test_score"])
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["optimizer"], train["lr"], train["weight_decay"]) == ("sgd", 0.01, 5e-4)
    assert train["backbone_lr_scale"] == 0.1 and train["schedule"] == "cosine"
    assert json.loads((out / "config.json").read_text())["data"]["classes"] == 7


def test_imagelist_forkmerge_train(office: Path, tmp_path: Path):
    out = tmp_path / "fm"
    ok(
        cli(
            f"forkmerge train --benchmark imagelist --root {office} "
            f"-t amazon --steps 4 --merge-every 2 --bn-recalibrate --out {out}"
        )
    )
    res = results(out)
    assert res["aux"] == ["dslr", "webcam"] and res["rounds"] == 2
    assert finite(res["test_score"], res["val_score"])  # BatchNorm re-estimated on decoded batches


def test_imagelist_pairwise_and_gcs(office: Path, tmp_path: Path):
    out = tmp_path / "pw"
    ok(cli(f"pairwise --benchmark imagelist --root {office} --steps 3 --out {out}"))
    assert len(pd.read_csv(out / "pairwise.csv")) == 6
    out = tmp_path / "gcs"
    ok(
        cli(
            f"gcs --benchmark imagelist --root {office} -t webcam --pretrain-steps "
            f"3 --batches 2 --probe-steps 2 --out {out}"
        )
    )
    assert results(out)["batches"] == 2


# --- bad data ----------------------------------------------------------------------------


def one_line_error(result, *texts: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip() == lines[0]  # on stderr
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


def broken(tree: Path, tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(tree, root)
    return root


def train_args(root: Path, out: Path, *extra: str) -> tuple:
    return ("train", "--benchmark", "domainnet", "--root", root, "-t", "c", *FAST,
            "--steps", "2", "--out", out, *extra)  # fmt: skip


def test_missing_root(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("NTLAB_DOMAINNET", raising=False)
    one_line_error(
        invoke("train", "--benchmark", "domainnet", "-t", "c", "--out", tmp_path / "r"),
        "no data root given; pass --root DIR or set NTLAB_DOMAINNET",
    )
    one_line_error(invoke(*train_args(tmp_path / "nowhere", tmp_path / "r")), "does not exist")
    monkeypatch.setenv("NTLAB_DOMAINNET", str(tmp_path / "nowhere"))
    one_line_error(
        invoke("train", "--benchmark", "domainnet", "-t", "c", "--out", tmp_path / "r"),
        str(tmp_path / "nowhere"),
    )
    assert not (tmp_path / "r").exists()


def test_missing_list(dn: Path, tmp_path: Path):
    root = broken(dn, tmp_path)
    (root / "image_list" / "quickdraw_test.txt").unlink()
    one_line_error(invoke(*train_args(root, tmp_path / "r")), "quickdraw_test.txt does not exist")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("painting/class_000/x.jpg", "painting_train.txt:3: no label after the image path"),
        (
            "painting/class_000/x.jpg 345",
            "painting_train.txt:3: label 345 is out of range (0..344)",
        ),
        ("painting/class_000/x.jpg -1", "painting_train.txt:3: label -1 is out of range"),
        ("painting/class_000/x.jpg cat", "painting_train.txt:3: the label 'cat' is not an integer"),
    ],
)
def test_bad_list_lines_name_the_file_and_line(dn: Path, tmp_path: Path, line: str, message: str):
    root = broken(dn, tmp_path)
    path = root / "image_list" / "painting_train.txt"
    lines = path.read_text().splitlines()
    lines[2] = line
    path.write_text("\n".join(lines) + "\n")
    one_line_error(invoke(*train_args(root, tmp_path / "r")), message)


BROKEN = {  # list line → how the image is broken, and the reason the error gives
    4: ("missing", "no such file"),
    7: ("undecodable", "Unsupported image file"),
}


def break_images(root: Path, which=tuple(BROKEN)) -> list[str]:
    lines = (root / "image_list" / "clipart_train.txt").read_text().splitlines()
    for number in which:
        image = root / lines[number - 1].rsplit(maxsplit=1)[0]
        if BROKEN[number][0] == "missing":
            image.unlink()
        else:
            image.write_bytes(b"\xff\xd8 truncated")
    return [f"clipart_train.txt:{n}" for n in which]


@pytest.mark.parametrize("number", list(BROKEN))
def test_an_unreadable_image_fails_the_run_with_its_path(dn: Path, tmp_path: Path, number: int):
    root = broken(dn, tmp_path)
    (where,) = break_images(root, (number,))
    out = tmp_path / "r"
    result = invoke(*train_args(root, out), "--steps", "6")
    one_line_error(
        result, "cannot read image", str(root / "clipart"), where, BROKEN[number][1],
        "--skip-bad-images",
    )  # fmt: skip
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and where in status["error"]
    assert not (out / "results.json").exists()  # no result that looks complete


def test_skip_bad_images_finishes_and_counts_them(dn: Path, tmp_path: Path):
    root = broken(dn, tmp_path)
    where = break_images(root)
    out = tmp_path / "r"
    result = invoke(*train_args(root, out, "--skip-bad-images"), "--steps", "6")
    ok(result)
    res = results(out)
    assert res["skipped_images"] == 2
    for w in where:
        assert any(w in e for e in res["skipped_examples"])
    assert finite(res["test_score"])
    check_report(out / "report.html", texts=("skipped images", "2 unreadable, left out"))


def test_data_list_shows_the_configured_image_lists(dn: Path, monkeypatch):
    monkeypatch.setenv("NTLAB_DOMAINNET", str(dn))
    result = runner.invoke(app, ["data", "list"], env={"COLUMNS": "200"})
    ok(result)
    row = next(line for line in result.output.splitlines() if "│ real " in line and "image" in line)
    assert "│    15 │" in row  # 5 classes × 3 train images
    assert "val: list" in row
    assert "test split 50/50, seed 0" in result.output


def test_the_console_script_trains_with_loader_processes(office: Path, tmp_path: Path):
    """The real entry point, two worker processes decoding: the same numbers as in-process."""
    outs = []
    for workers in ("2", "0"):
        out = tmp_path / f"w{workers}"
        args = shlex.split(f"train --benchmark imagelist --root {office} -t dslr --method ew")
        args += [*FAST, "--workers", workers, "--steps", "4", "--out", str(out)]
        proc = subprocess.run(
            [sys.executable, "-m", "ntlab", *args], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads((out / "config.json").read_text())["train"]["workers"] == int(workers)
        outs.append(results(out))
    assert outs[0]["test_score"] == outs[1]["test_score"]
    # --workers is not part of a training's identity: the second run reuses the first's STL
    assert (outs[0]["stl"]["source"], outs[1]["stl"]["source"]) == ("run", "cache")
