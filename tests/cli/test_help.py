"""Help pages people read: panels, choices the parser checks, did-you-mean, `ntlab methods`."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from ntlab import catalog
from ntlab.cli import app
from ntlab.data import BENCHMARKS
from ntlab.errors import closest, unknown_name
from ntlab.methods import METHODS
from ntlab.models import BACKBONES

runner = CliRunner()
COMMANDS = [
    ["train"], ["gcs"], ["csd"], ["tsne"], ["sweep"], ["pairwise"], ["ternary"], ["compare"],
    ["forkmerge", "train"], ["report"], ["data", "prepare"], ["cache", "clear"], ["affinity"],
]  # fmt: skip


def flat(text: str) -> str:
    """Rendered help without box drawing or line wrapping."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def panels(text: str) -> list[str]:
    return re.findall(r"╭─ (.+?) ─", text)


def test_the_catalog_names_exactly_what_the_registries_build():
    assert set(catalog.METHOD_INFO) == set(METHODS) | set(catalog.PROCEDURES)
    assert catalog.BACKBONE_NAMES == tuple(BACKBONES)
    assert set(catalog.BENCHMARK_NAMES) == set(BENCHMARKS)
    for name in METHODS:
        assert METHODS.get(name).summary == catalog.METHOD_INFO[name].summary


def test_methods_lists_every_method_with_its_paper():
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    for name, info in catalog.METHOD_INFO.items():
        assert name in rows, name
        assert info.paper.split(",")[0] in rows[name]
    assert "Kendall, Gal & Cipolla, CVPR 2018" in rows["uw"]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_help_page_renders(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


def test_train_help_groups_options_in_panels_with_image_lists_apart():
    out = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout
    found = panels(out)
    for panel in ("Options", "Data", "Model", "Optimisation", "ForkMerge", "Seeds and output"):
        assert panel in found
    images = next(p for p in found if p.startswith("Image lists"))
    assert found.index(images) > found.index("Optimisation")
    # the image-list options are in their panel, not among the model or optimiser options
    section = out.split(f"╭─ {images}")[1].split("╰")[0]
    for option in ("--root", "--image-size", "--workers", "--skip-bad-images", "--domains"):
        assert option in section
    optim = out.split("╭─ Optimisation")[1].split("╰")[0]
    assert "--root" not in optim and "--steps" in optim and "--lr" in optim


def test_pairwise_keeps_its_own_domains_option_in_its_first_panel():
    out = runner.invoke(app, ["pairwise", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--domains" in out.split("╭─ Options")[1].split("╰")[0]


@pytest.mark.parametrize(
    ("option", "shown"),
    [
        ("--optimizer", "[adam|sgd]"),
        ("--schedule", "[constant|cosine|step|late-step]"),
        ("--bn-batches", "[pooled|per-term]"),
        ("--select", "[last|best-val]"),
        ("--loss-reduction", "[sum|mean]"),
        ("--merge-heads", "[all|shared]"),
        ("--benchmark", "[digits|imagelist|domainnet|scenes|nyuv2|ssl|markets|aliexpress]"),
        ("--preset", "[quick|default|paper|nyuv2-paper|ssl-paper]"),
        ("--format", "[png|svg]"),
        ("--method -m", "METHOD"),
    ],
)
def test_options_with_choices_list_them(option, shown):
    text = flat(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout)
    assert f"{option} {shown}" in text


def test_method_help_points_to_ntlab_methods_and_stays_short():
    text = flat(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).stdout)
    method = text.split("--method -m METHOD")[1].split("--aux")[0]
    assert "`ntlab methods`" in method and len(method) < 600


def test_placeholders_render_as_written():
    text = flat(runner.invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).stdout)
    assert "[default: cores − 1, ≤ 8]" in text
    assert "cuda[:N]" in text
    steps = "quick: 300, default: 500, paper: 50000, nyuv2-paper: 16000, ssl-paper: 200000"
    assert f"[default: from --preset ({steps})]" in text
    report = flat(runner.invoke(app, ["report", "--help"], env={"COLUMNS": "250"}).stdout)
    assert "reports/<run>.html" in report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "-t", "mnist", "--optimizer", "adm"],
         "Invalid value for '--optimizer': 'adm' is not one of adam, sgd; did you mean 'adam'?"),
        (["train", "-t", "mnist", "--method", "pcgard"], "did you mean 'pcgrad'?"),
        (["train", "-t", "mnist", "--backbone", "resnet-18"], "did you mean 'resnet18'?"),
        (["train", "-t", "mnist", "--benchmark", "digit"], "did you mean 'digits'?"),
        (["train", "-t", "mnist", "--schedule", "cosin"], "did you mean 'cosine'?"),
        (["train", "-t", "mnist", "--preset", "quik"], "did you mean 'quick'?"),
        (["forkmerge", "train", "-t", "mnist", "--search", "gredy"], "did you mean 'greedy'?"),
        (["compare", "-t", "mnist", "--methods", "ew,pcgard"], "did you mean 'pcgrad'?"),
        (["train", "-t", "mnsit"], "unknown target 'mnsit'; did you mean 'mnist'?"),
        (["train", "-t", "mnist", "--method", "ew", "--aux", "sin"],
         "unknown auxiliary task 'sin'; did you mean 'syn'?"),
        (["pairwise", "--domains", "mnist,synn"], "did you mean 'syn'? Choose one of: mnist"),
        (["pairwise", "--domains", "mnist,syn", "--method", "forkmerg"],
         "did you mean 'forkmerge'?"),
    ],
)  # fmt: skip
def test_unknown_names_exit_2_with_a_did_you_mean(tiny_digits, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_did_you_mean_only_when_a_choice_is_close():
    assert closest("MNIST", ["mnist", "syn"]) == "mnist"
    assert closest("zzz", ["mnist", "syn"]) is None
    assert str(unknown_name("target", "zzz", ["mnist", "syn"])) == (
        "unknown target 'zzz'; choose one of: mnist, syn"
    )
    assert str(unknown_name("target", "mnst", ["mnist", "syn"])) == (
        "unknown target 'mnst'; did you mean 'mnist'? Choose one of: mnist, syn"
    )
