"""The Python API: ntlab.Task, ntlab.train, ntlab.forkmerge, ntlab.gcs, ntlab.sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ntlab

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from custom_tasks import make_tasks  # noqa: E402

COMMON = {"steps": 40, "batch_size": 16, "lr": 1e-3, "seed": 0, "threads": 1}


def backbone() -> nn.Module:
    torch.manual_seed(123)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())


@pytest.fixture(scope="module")
def tasks():
    return make_tasks()


def test_the_example_runs_as_the_readme_says(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "examples/custom_tasks.py", "--steps", "60", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "EW" in result.stdout and "ForkMerge" in result.stdout and "±" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "acc" and "transfer_gain" in results
    assert (out / "report.html").is_file() and (out / "merges.csv").is_file()


def test_the_example_prints_the_same_numbers_in_another_process():
    """The user's modules are seeded by the user (the example does): then a second process
    gives the same numbers, line for line."""
    command = [sys.executable, "examples/custom_tasks.py", "--steps", "30"]
    runs = [
        subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert "test acc" in runs[0].stdout and runs[0].stdout == runs[1].stdout


def test_forkmerge_gives_the_merged_model_its_lambdas_and_a_tg_with_noise(tasks):
    net = backbone()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    heads_before = tasks[0].head.weight.detach().clone()
    result = ntlab.forkmerge(net, tasks, target="main", merge_every=20, **COMMON)
    # two rounds × three branches (the target alone, + aux, + noise)
    assert len(result.lambdas) == 6
    assert set(result.lambdas["branch"]) == {0, 1, 2}
    for _, group in result.lambdas.groupby("round"):
        assert group["lambda"].sum() == pytest.approx(1.0)
    assert set(result.metrics["test"]) == {"acc"}
    assert result.transfer_gain == pytest.approx(
        result.metrics["test"]["acc"] - result.results["stl"]["test_score"]
    )
    assert result.tg_se is not None and result.effect in ("helps", "hurts", "within_noise")
    # the user's modules are untouched, and the result's model is a working copy
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(tasks[0].head.weight.detach(), heads_before)
    x = tasks[0].splits["test"][0][:5]
    assert result.model.logits(result.model.features(x), 0).shape == (5, 3)
    again = ntlab.forkmerge(net, tasks, target="main", merge_every=20, **COMMON)
    assert again.metrics == result.metrics and again.transfer_gain == result.transfer_gain


def test_train_runs_any_method_and_orients_tg_by_the_primary_metric(tasks):
    result = ntlab.train(backbone(), tasks, target="aux", method="ew", aux="main", **COMMON)
    stl = result.results["stl"]
    assert result.results["higher_is_better"] is False and stl["higher_is_better"] is False
    # mse: lower is better, so TG = STL's error minus the method's
    assert result.transfer_gain == pytest.approx(stl["test_score"] - result.metrics["test"]["mse"])
    assert result.results["tg_se_kind"] == "folds"
    uw = ntlab.train(backbone(), tasks, target="main", method="uw", baseline=False, **COMMON)
    assert uw.transfer_gain is None and 0 <= uw.metrics["test"]["acc"] <= 100


def test_gcs_and_sweep_give_the_clis_tables(tasks):
    table = ntlab.gcs(backbone(), tasks, target="main", aux="aux", batches=3, **COMMON)
    assert {"batch", "lam", "gcs", "tg", "tg_loss"} <= set(table.columns)
    assert len(table) == 3 * 6 and (table.loc[table["lam"] == 0, "tg"] == 0).all()
    common = {k: v for k, v in COMMON.items() if k != "seed"}
    sweep = ntlab.sweep(backbone(), tasks, "main", "aux", lams=[0, 0.5], seeds=[0], **common)
    assert list(sweep["lam"]) == [0.0, 0.5] and sweep.loc[0, "tg"] == 0


def test_a_dataset_is_accepted_as_data(tasks):
    x, y = tasks[0].splits["train"]
    ds = torch.utils.data.TensorDataset(x, y)
    task = ntlab.Task("d", train=ds, val=ds, test=ds, head=nn.Linear(32, 3),
                      loss=F.cross_entropy, metrics={"acc": ntlab.metrics.accuracy})  # fmt: skip
    assert torch.equal(task.splits["train"][0], x)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": (torch.zeros(3, 16), torch.zeros(2))}, "3 inputs and 2 targets"),
        ({"train": (torch.full((3, 16), float("nan")), torch.zeros(3))}, "NaN or inf"),
        ({"metrics": {}}, "at least one metric"),
        ({"primary": "f1"}, "primary 'f1'"),
        ({"train": [1, 2, 3]}, "must be (inputs, targets)"),
    ],
)
def test_bad_tasks_raise_ntlab_errors(change, message):
    data = (torch.zeros(4, 16), torch.zeros(4, dtype=torch.long))
    args = {"train": data, "val": data, "test": data, "head": nn.Linear(32, 3),
            "loss": F.cross_entropy, "metrics": {"acc": ntlab.metrics.accuracy}}  # fmt: skip
    with pytest.raises(ntlab.NtlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ntlab.Task("t", **{**args, **change})


def test_bad_calls_raise_ntlab_errors_with_the_clis_messages(tasks):
    with pytest.raises(ntlab.NtlabError, match="unknown target 'nope'"):
        ntlab.train(backbone(), tasks, target="nope", **COMMON)
    with pytest.raises(ntlab.NtlabError, match="--steps"):
        ntlab.train(backbone(), tasks, target="main", steps=0)
    with pytest.raises(ntlab.NtlabError, match="unknown method"):
        ntlab.train(backbone(), tasks, target="main", method="magic", **COMMON)
    with pytest.raises(ntlab.NtlabError, match="unknown backbone 'resnet'"):
        ntlab.train("resnet", tasks, target="main", **COMMON)
    with pytest.raises(ntlab.NtlabError, match="torch.nn.Module"):
        ntlab.train(42, tasks, target="main", **COMMON)
    with pytest.raises(ntlab.NtlabError, match="branches"):
        ntlab.forkmerge(backbone(), tasks, target="main", branches="some", **COMMON)


def test_every_training_option_is_open_to_the_api_and_typos_are_refused(tasks):
    best = ntlab.train(
        backbone(), tasks, target="main", method="stl", select="best-val", eval_every=10,
        baseline=False, **COMMON,
    )  # fmt: skip
    assert best.results["select"] == "best-val" and best.results["selected_step"] % 10 == 0
    with pytest.raises(ntlab.NtlabError, match="unknown option 'selct'"):
        ntlab.train(backbone(), tasks, target="main", selct="best-val", **COMMON)
    pruned = ntlab.forkmerge(backbone(), tasks, target="main", merge_every=20, prune=2, **COMMON)
    assert set(pruned.lambdas.query("round == 1")["branch"]) <= {0, 1, 2}
    assert len(pruned.lambdas.query("round == 1")) == 2  # pruned to two branches after round 0


def test_train_runs_the_procedures_and_gcs_and_sweep_write_the_clis_run_dirs(tasks, tmp_path):
    grid = ntlab.train(backbone(), tasks, target="main", method="grid-search", aux="aux",
                       lams=[0, 0.5], **COMMON)  # fmt: skip
    assert grid.results["method"] == "grid-search" and grid.results["lam"] in (0.0, 0.5)
    fm = ntlab.train(backbone(), tasks, target="main", method="forkmerge", **COMMON)
    assert fm.lambdas is not None and fm.results["method"] == "forkmerge"
    ntlab.gcs(backbone(), tasks, target="main", aux="aux", batches=2, out=tmp_path / "g", **COMMON)
    common = {k: v for k, v in COMMON.items() if k != "seed"}
    ntlab.sweep(backbone(), tasks, "main", "aux", lams=[0, 0.5], out=tmp_path / "s", **common)
    for run, table in (("g", "gcs.csv"), ("s", "sweep.csv")):
        results = json.loads((tmp_path / run / "results.json").read_text())
        assert results["metric"] == "acc" and (tmp_path / run / table).is_file()
        assert "<html" in (tmp_path / run / "report.html").read_text()


def test_a_registered_benchmark_and_backbone_give_the_clis_numbers(tiny_digits, tmp_path):
    """The API and the command line are one path: the same training, the same numbers."""
    from typer.testing import CliRunner

    from ntlab.cli import app

    args = {"steps": 12, "batch_size": 16, "seed": 3, "threads": 1}
    api = ntlab.train("cnn", "digits", target="optdigits", method="ew", aux="mnist", **args)
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, [
        "train", "--target", "optdigits", "--method", "ew", "--aux", "mnist", "--steps", "12",
        "--batch-size", "16", "--seed", "3", "--threads", "1", "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    cli = json.loads((out / "results.json").read_text())
    assert api.results["test_score"] == cli["test_score"]
    assert api.results["test_correct"] == cli["test_correct"]
    assert api.transfer_gain == cli["transfer_gain"]
