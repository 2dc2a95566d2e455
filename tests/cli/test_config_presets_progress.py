"""--config files (tables per command, every option, the recorded command), presets that
follow --steps, and progress that says what happens (issue 15, items 5–7)."""

import io
import json
import re

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ntlab.cli import app, common
from ntlab.cli.common import StepProgress
from ntlab.cli.forkmerge import branch_label, round_lines
from ntlab.core.forkmerge import joint_branches, parse_branch, per_task_branches
from ntlab.presets import PRESETS, preset_value

runner = CliRunner()
TINY = ["--steps", "8", "--eval-every", "4", "--batch-size", "8"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read(path):
    return json.loads(path.read_text())


def error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- config files ---------------------------------------------------------------------------


def test_the_target_can_come_from_the_config_file(tiny_digits, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('target = "mnist"\nsteps = 8\neval_every = 4\nbatch_size = 8\n')
    result = invoke("train", "--config", cfg, "--out", tmp_path / "r", "-q")
    assert result.exit_code == 0, result.output
    assert read(tmp_path / "r" / "config.json")["train"]["target"] == "mnist"


def test_a_missing_target_is_one_line_naming_both_places(tiny_digits, tmp_path):
    result = invoke("train", *TINY, "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert error_line(result) == (
        "error: missing option --target (the target task; give it on the command line or "
        "as `target` in --config)"
    )
    assert not (tmp_path / "r").exists()


def test_a_command_table_overrides_the_top_level_and_other_tables_are_ignored(
    tiny_digits, tmp_path
):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'target = "syn"\nsteps = 12\neval_every = 4\nbatch_size = 8\n'
        'lams = "0,1"\n'  # a key of sweep/csd/compare: not train's, ignored at the top level
        '[train]\nsteps = 8\nmethod = "stl"\n'
        '[pairwise]\ndomains = "mnist,syn"\nsteps = 4\n'
        "[forkmerge.train]\nsteps = 6\n"
    )
    result = invoke("train", "--config", cfg, "--out", tmp_path / "r", "-q")
    assert result.exit_code == 0, result.output
    train = read(tmp_path / "r" / "config.json")["train"]
    assert (train["target"], train["steps"], train["method"]) == ("syn", 8, "stl")


@pytest.mark.parametrize(
    "text, key",
    [
        ("stpes = 8\n", "'stpes' (no ntlab command has an option --stpes"),
        ("[train]\nlams = '0,1'\n", "'train.lams' (`ntlab train` has no option --lams"),
        ("[forkmerge]\nlams = '0,1'\n", "'forkmerge.lams' (no `ntlab forkmerge` subcommand"),
        ("[trian]\nsteps = 8\n", "table [trian] names no ntlab command"),
    ],
)
def test_a_bad_key_is_exit_2_naming_the_file_and_the_key(tiny_digits, tmp_path, text, key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    result = invoke("train", "-t", "mnist", *TINY, "--config", cfg, "--out", tmp_path / "r")
    assert result.exit_code == 2
    line = error_line(result)
    assert f"--config file {cfg}: " in line and key in line
    assert not (tmp_path / "r").exists()


# Every option of `forkmerge train` but those digits has no use for (image lists: root,
# image_size, workers; a weights file), each a value other than its default.
FULL_FORKMERGE = """
target = "optdigits"
aux = ["mnist", "syn"]
branches = "per-task"
branch = ["optdigits=1", "optdigits=1,mnist=1", "optdigits=1,syn=0.5"]
merge_every = 3
search = "greedy"
grid_step = 0.25
val_samples = 40
merge_margin = 0.5
prune = 2
bn_recalibrate = true
optimizer_state = "reset"
merge_heads = "shared"
merge_op = "ties"
ties_k = 0.5
dare_p = 0.3
resume = false
baselines = false
benchmark = "digits"
steps = 7
batch_size = 8
lr = 0.002
optimizer = "sgd"
weight_decay = 0.0001
schedule = "constant"
backbone = "cnn"
width = 8
backbone_lr_scale = 0.5
seed = 3
device = "cpu"
eval_every = 5
domains = "all"
skip_bad_images = false
threads = 1
bn_batches = "per-term"
select = "best-val"
loss_reduction = "mean"
precision = "bf16"
memory_format = "channels-last"
compile = "off"
branch_exec = "concurrent"
dist_timeout = 300
jobs = 1
executor = "local"
gpus_per_job = 1.0
preset = "quick"
out = "{out}"
overwrite = true
quiet = false
format = "svg"
"""
LEFT_OUT = {"config", "root", "image_size", "workers", "decode", "weights", "ray_address"}
LEFT_OUT |= {"base", "labels"}  # ssl's own: digits refuses them


def test_a_full_forkmerge_toml_runs_alone_and_its_recorded_command_reruns_it(tiny_digits, tmp_path):
    from typer.main import get_command

    root = get_command(app)
    with root.make_context("ntlab", ["forkmerge", "train"], resilient_parsing=True) as ctx:
        params = {
            p.name for p in root.get_command(ctx, "forkmerge").get_command(ctx, "train").params
        }
    keys = {line.split(" = ")[0] for line in FULL_FORKMERGE.strip().splitlines()}
    assert keys == params - LEFT_OUT  # the file holds every option

    cfg = tmp_path / "f.toml"
    cfg.write_text(FULL_FORKMERGE.replace("{out}", str(tmp_path / "a")))
    first = invoke("forkmerge", "train", "--config", cfg)
    assert first.exit_code == 0, first.output
    config = read(tmp_path / "a" / "config.json")
    assert config["train"]["target"] == "optdigits" and config["train"]["steps"] == 7
    assert config["forkmerge"]["merge_every"] == 3 and config["forkmerge"]["search"] == "greedy"
    assert (
        config["train"]["select"] == "best-val" and config["branches"][2] == "optdigits=1,syn=0.5"
    )

    words = config["environment"]["command_line"]
    assert words[:3] == ["ntlab", "forkmerge", "train"] and "--config" not in words
    assert words.count("--branch") == 3 and "--target" in words and "--no-baselines" in words
    # a stable order: the options as --help lists them (its own, then the panels: Data,
    # Model, Optimisation, ForkMerge, Image lists, Seeds and output)
    flags = [w for w in words if w.startswith("--")]
    assert flags.index("--target") < flags.index("--benchmark") < flags.index("--backbone")
    assert flags.index("--backbone") < flags.index("--steps") < flags.index("--merge-heads")
    assert flags.index("--merge-heads") < flags.index("--seed") < flags.index("--out")
    words[words.index("--out") + 1] = str(tmp_path / "b")
    again = invoke(*words[1:])
    assert again.exit_code == 0, again.output
    rerun = read(tmp_path / "b" / "config.json")
    for c in (config, rerun):
        c.pop("environment")
    assert rerun == config
    assert (tmp_path / "a" / "lambda.svg").is_file() and (tmp_path / "b" / "lambda.svg").is_file()


# --- presets that follow the budget -----------------------------------------------------------


def test_the_presets_merge_every_is_a_quarter_of_the_steps():
    assert [preset_value(p, "merge_every") for p in ("quick", "default", "paper")] == [
        75,
        125,
        12_500,
    ]  # at each preset's own steps: its numbers of before
    assert preset_value("quick", "merge_every", 60) == 15
    assert preset_value("quick", "merge_every", 30) == 8
    assert preset_value("quick", "merge_every", 1) == 1
    assert preset_value("quick", "eval_every", 60) == 60  # at most --steps
    assert preset_value("paper", "eval_every") == 2_500


def test_pairwise_with_a_preset_and_fewer_steps_needs_no_merge_every(tiny_digits, tmp_path):
    out = tmp_path / "p"
    args = ["pairwise", "--domains", "mnist,syn", "--method", "ew,forkmerge", "--preset"]
    result = invoke(*args, "quick", "--steps", "8", "--batch-size", "8", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    config = read(out / "config.json")
    assert config["forkmerge"]["merge_every"] == 2 and config["train"]["eval_every"] == 8
    assert "--merge-every" in config["environment"]["command_line"]  # inlined: re-runnable


def test_an_error_about_a_value_not_typed_says_where_it_came_from(
    tiny_digits, tmp_path, monkeypatch
):
    cfg = tmp_path / "f.toml"
    cfg.write_text("merge_every = 75\n")
    args = ["forkmerge", "train", "-t", "optdigits", "--aux", "mnist", *TINY, "--out", tmp_path]
    result = invoke(*args, "--config", cfg)
    assert result.exit_code == 2
    line = error_line(result)
    assert line.startswith("error: --merge-every must be between 1 and --steps (8), got 75")
    assert line.endswith(f"; --merge-every 75 (from {cfg})")

    monkeypatch.setitem(PRESETS, "quick", {**PRESETS["quick"], "batch_size": 0})
    result = invoke("train", "-t", "mnist", "--preset", "quick", "--steps", "4", "--out", tmp_path)
    assert "--batch-size 0 (from --preset quick)" in error_line(result)
    result = invoke("train", "-t", "mnist", "--steps", "4", "--batch-size", "0")
    assert "(from" not in error_line(result)  # typed: nothing to add


# --- progress ---------------------------------------------------------------------------------


@pytest.fixture
def terminal(monkeypatch):
    """The progress console as a terminal (bars are drawn), its output kept."""
    buffer = io.StringIO()
    monkeypatch.setattr(
        common, "console", Console(file=buffer, force_terminal=True, width=160, color_system=None)
    )
    return buffer


def test_a_cached_training_prints_one_line_not_a_bar(tiny_digits, tmp_path, terminal):
    args = ["train", "-m", "ew", "-t", "permlo", "--aux", "mnist", *TINY, "--seed", "7"]
    assert invoke(*args, "--out", tmp_path / "a").exit_code == 0
    assert "from cache" not in terminal.getvalue()
    assert re.search(r"ew → permlo .*/8", terminal.getvalue())  # the bars were drawn
    terminal.seek(0), terminal.truncate()
    result = invoke(*args, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    shown = terminal.getvalue()
    assert "stl → permlo: from cache" in shown
    assert not re.search(r"stl → permlo[^:\n]*\d+/8", shown)  # no bar for it
    assert "0/8" not in shown  # a bar appears at its first step


def test_quiet_stays_silent(tiny_digits, tmp_path, terminal):
    args = ["train", "-m", "ew", "-t", "permlo", "--aux", "mnist", *TINY, "--seed", "8"]
    for name in ("a", "b"):
        assert invoke(*args, "--out", tmp_path / name, "-q").exit_code == 0
    assert terminal.getvalue() == ""


def test_the_overall_eta_comes_from_the_parts_that_trained(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(common, "_now", lambda: clock[0])
    progress = StepProgress(quiet=False)  # not started: nothing is drawn
    overall = progress.overall("pairwise", 4, "cells")
    task = progress.progress.tasks[0]
    column = common._Remaining()
    bar = progress.callback("ew a ← b", 10)
    for step in range(1, 11):
        bar(step)
    clock[0] += 30.0  # a part that trained, 30 s
    overall.advance()
    assert column.render(task).plain == "0:01:30"  # 3 parts left × 30 s
    progress.callback("stl a", 10)  # never steps: from the cache
    clock[0] += 1.0
    overall.advance()
    assert task.completed == 2 and overall.durations == [30.0]
    assert column.render(task).plain == "0:01:00"
    assert len(progress.progress.tasks) == 1  # the finished training's bar is gone


def test_forkmerge_round_lines_name_the_branches():
    tasks = ["optdigits", "mnist", "syn"]
    assert [branch_label(b, "optdigits") for b in per_task_branches("optdigits", ["mnist"])] == [
        "target",
        "+mnist",
    ]
    assert branch_label(joint_branches("optdigits", ["mnist", "syn"])[1], "optdigits") == (
        "+mnist,syn"
    )
    assert branch_label(parse_branch("optdigits=1,syn=0.5", tasks), "optdigits") == "+syn×0.5"
    merges = [
        {"round": 0, "step": 75, "branch": 0, "lambda": 1.0},
        {"round": 0, "step": 75, "branch": 1, "lambda": 0.0},
        {"round": 1, "step": 150, "branch": 0, "lambda": 0.7},
        {"round": 1, "step": 150, "branch": 1, "lambda": 0.3},
    ]
    assert round_lines(merges, ["target", "+mnist"]) == [
        "round 1 (step 75): target 1 · +mnist 0",
        "round 2 (step 150): target 0.7 · +mnist 0.3",
    ]


def test_forkmerge_train_prints_each_round_with_its_branches(tiny_digits, tmp_path):
    args = ["forkmerge", "train", "-t", "optdigits", "--aux", "mnist", "--branches", "per-task"]
    result = invoke(*args, *TINY, "--merge-every", "4", "--no-baselines", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("Λ* round")]
    assert len(lines) == 2
    assert re.fullmatch(r"Λ\* round 2 \(step 8\): target [\d.]+ · \+mnist [\d.]+", lines[1])


def test_the_nyuv2_paper_preset_is_the_papers_recipe(tiny_digits, tmp_path):
    """Adam 1e-4, weight decay 1e-5, batch 8, 200 epochs of 80 batches, the rate halved at
    epoch 100, Δt of 10 epochs, the dilated ResNet-50: resolved as a run records them."""
    assert preset_value("nyuv2-paper", "steps") == 16_000
    assert preset_value("nyuv2-paper", "merge_every") == 800
    result = runner.invoke(
        app, ["forkmerge", "train", "--target", "optdigits", "--aux", "mnist", "--preset",
              "nyuv2-paper", "--steps", "4", "--backbone", "cnn", "--out", tmp_path / "fm"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = json.loads((tmp_path / "fm" / "config.json").read_text())["train"]
    assert (cfg["lr"], cfg["weight_decay"], cfg["batch_size"], cfg["optimizer"]) == (
        1e-4, 1e-5, 8, "adam",
    )  # fmt: skip
    assert cfg["schedule"] == "step"
