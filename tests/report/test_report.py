"""`ntlab report`, the per-command views and the report figures."""

from __future__ import annotations

import json
import os
import shutil

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from typer.testing import CliRunner

from ntlab.cli import app
from ntlab.report import figures
from ntlab.report.page import render, template_digest
from ntlab.report.views import VIEWS, Run, num
from tests.report_checks import check_report

runner = CliRunner()
FAST = ["--steps", "12", "--eval-every", "6", "--batch-size", "16", "--target", "optdigits"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tiny_digits, tmp_path_factory):
    """A finished `train`, a finished `forkmerge train` and a `train` that failed."""
    root = tmp_path_factory.mktemp("report_runs")
    assert (
        invoke("train", *FAST, "--method", "ew", "--aux", "mnist", "--out", root / "ew").exit_code
        == 0
    )
    assert (
        invoke(
            "forkmerge", "train", *FAST, "--aux", "mnist", "--merge-every", 6, "--out", root / "fm"
        ).exit_code
        == 0
    )
    bad = root / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    failed = invoke("train", *FAST, "--weights", bad, "--out", root / "failed")
    assert failed.exit_code == 2
    return root


def test_report_of_one_run_goes_to_reports_by_default(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("report", runs / "ew")
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / "ew.html"
    assert result.stdout.strip() == "report: reports/ew.html"
    results = json.loads((runs / "ew" / "results.json").read_text())
    page = check_report(
        out,
        figures=1,
        texts=(
            "ntlab train --target optdigits --method ew --aux mnist --steps 12",
            num(results["transfer_gain"], signed=True),
            f"{results['test_score']:.2f}",
            "What was run",
            "Training curves",
        ),
    )
    assert "comparison" not in page and "Runs compared" not in page


def test_report_of_several_runs_compares_them(runs, tmp_path):
    out = tmp_path / "cmp.html"
    result = invoke("report", runs / "ew", runs / "fm", runs / "failed", "--out", out)
    assert result.exit_code == 0, result.output
    # ew: 1 figure; forkmerge: Λ*, search landscape, training; the TG bars of the overview.
    page = check_report(
        out, figures=1 + 3 + 1, texts=("Runs compared", "Transfer gain of each run")
    )
    overview = page[page.index("Runs compared") : page.index('<section class="run"')]
    for name, state in (("ew", "completed"), ("fm", "completed"), ("failed", "failed")):
        assert f"<td>{name}</td>" in overview and f"<td>{state}</td>" in overview
    fm = json.loads((runs / "fm" / "results.json").read_text())
    assert num(fm["transfer_gain"], signed=True) in overview
    assert page.count('<section class="run"') == 3


def test_a_failed_run_says_so_with_its_error(runs, tmp_path):
    page = check_report(
        runs / "failed" / "report.html",
        figures=0,
        texts=("This run did not complete (failed)", "cannot read weights file"),
    )
    assert "Headline" not in page  # no results: no headline numbers that look complete


def test_an_unfinished_run_renders_its_partial_tables(runs, tmp_path):
    run = tmp_path / "unfinished"
    shutil.copytree(runs / "fm", run)
    (run / "results.json").unlink()
    (run / "status.json").write_text(json.dumps({"state": "running", "started": "x"}))
    page = render([Run.load(run)])
    assert "did not complete (running)" in page and "no results.json yet" in page
    assert "Partial tables" in page and "merges.csv" in page
    # Figures are drawn again from the tables, not taken from files of a finished run.
    assert page.count("<img") == 3


def test_svg_format_inlines_svg(runs, tmp_path):
    out = tmp_path / "r.html"
    assert invoke("report", runs / "fm", "--format", "svg", "--out", out).exit_code == 0
    page = check_report(out, figures=3)
    assert page.count("data:image/svg+xml;base64,") == 3 and "data:image/png" not in page


def test_report_is_the_same_code_path_as_the_command(runs):
    """The command's report.html and `ntlab report` of that directory show the same body."""
    own = (runs / "fm" / "report.html").read_text()
    again = render([Run.load(runs / "fm")], base=runs / "fm")

    def body(page):
        return page[page.index("<main>") :]

    assert body(own) == body(again)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no run directories given"),
        (["{tmp}"], "is not an ntlab run directory"),
        (["{tmp}/nothing"], "is not a folder"),
        (["{ew}", "--format", "jpg"], "--format must be one of png, svg"),
        (["{ew}", "--out", "{tmp}"], "is a folder"),
    ],
)
def test_bad_input_exits_2_with_one_line(runs, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, ew=runs / "ew") for a in args]
    result = invoke("report", *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not list(tmp_path.glob("*.html"))


def test_a_damaged_results_file_is_a_clear_error(runs, tmp_path):
    run = tmp_path / "damaged"
    shutil.copytree(runs / "ew", run)
    (run / "results.json").write_text("{not json")
    result = invoke("report", run, "--out", tmp_path / "x.html")
    assert result.exit_code == 2 and "results.json is damaged (not valid JSON" in result.stderr


def test_every_command_has_a_view():
    assert set(VIEWS) >= {
        "train",
        "forkmerge train",
        "gcs",
        "csd",
        "tsne",
        "sweep",
        "pairwise",
        "ternary",
    }


# --- figures ---------------------------------------------------------------------------------


def test_search_figure_stars_the_chosen_candidate_of_each_round():
    rows = []
    for rnd in range(3):
        for c, w in enumerate([0.0, 0.5, 1.0]):
            rows.append(
                {
                    "round": rnd,
                    "step": 5 * (rnd + 1),
                    "candidate": c,
                    "weights": f"{1 - w:.4f};{w:.4f}",
                    "val_score": 50 + rnd + w,
                    "chosen": c == rnd,
                }
            )
    fig = figures.search_figure(pd.DataFrame(rows))
    ax = fig.axes[0]
    stars = [c for c in ax.collections if len(c.get_offsets())]
    assert [tuple(s.get_offsets()[0]) for s in stars] == [(0.0, 50.0), (0.5, 51.5), (1.0, 53.0)]
    assert ax.get_xlabel().startswith("Λ₁")
    plt.close(fig)


def test_training_figure_draws_one_curve_per_task_target_first():
    metrics = pd.DataFrame(
        [
            {"step": s, "task": t, "split": "train", "metric": "loss", "value": v / s}
            for s in (10, 20, 30)
            for t, v in (("optdigits", 2.0), ("mnist", 1.0))
        ]
        + [{"step": 30, "task": "optdigits", "split": "val", "metric": "acc", "value": 90.0}]
    )
    fig = figures.training_figure(metrics)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["train loss: optdigits", "train loss: mnist"]
    assert lines[0].get_linewidth() > lines[1].get_linewidth()
    assert list(lines[1].get_ydata()) == pytest.approx([0.1, 0.05, 1 / 30])
    plt.close(fig)


def test_tg_bars_are_sorted_and_coloured_by_sign():
    fig = figures.tg_bar_figure(
        pd.DataFrame({"label": ["a", "b", "c"], "tg": [1.0, -2.0, 0.5], "tg_std": [0.1, 0.2, 0.0]})
    )
    bars = fig.axes[0].patches
    assert [b.get_width() for b in bars] == [-2.0, 0.5, 1.0]
    red, blue = bars[0].get_facecolor(), bars[2].get_facecolor()
    assert red[0] > red[2] and blue[2] > blue[0]
    plt.close(fig)


def test_example_report_is_current():
    """`reports/digits-example.html` was rendered by the report code as it is now; regenerate it
    with `python benchmarks/example_report.py` after changing the views, figures or template."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "reports", "digits-example.html")
    page = check_report(path)
    assert f'<meta name="ntlab-report-digest" content="{template_digest()}">' in page
    for command in VIEWS:
        assert f"ntlab {command}: " in page, f"the example has no {command} run"


def test_pairwise_heatmap_hatches_the_cells_within_noise():
    """One seed: a cell of one test image (+0.05 ± 0.05) is within noise and hatched; +3.0 ±
    0.5 helps and −2.0 ± 0.4 hurts, drawn plain; the legend says what the hatching means."""
    import pandas as pd

    from ntlab.report.figures import WITHIN_NOISE_HATCH, pairwise_figure

    cells = {("a", "b"): (0.05, 0.05), ("a", "c"): (3.0, 0.5), ("b", "a"): (-2.0, 0.4),
             ("b", "c"): (0.0, 0.0), ("c", "a"): (0.5, 0.3), ("c", "b"): (-0.9, 0.4)}  # fmt: skip
    table = pd.DataFrame(
        [
            {"target": t, "aux": a, "method": "ew", "seed": 0, "tg": tg, "tg_se": se,
             "tg_se_kind": "paired"}
            for (t, a), (tg, se) in cells.items()
        ]
    )  # fmt: skip
    fig = pairwise_figure(table, "ew")
    ax = fig.axes[0]
    hatched = [p for p in ax.patches if p.get_hatch() == WITHIN_NOISE_HATCH]
    # within noise: a←b, b←c (identical to STL), c←a (0.5 ≤ 0.6); c←b (−0.9 < −0.8) hurts
    assert sorted((round(p.get_x() + 0.5), round(p.get_y() + 0.5)) for p in hatched) == [
        (0, 2), (1, 0), (2, 1)
    ]  # fmt: skip
    assert "3 within noise" in ax.get_title()
    assert "within noise" in ax.get_legend().get_texts()[0].get_text()
    texts = {t.get_text() for t in ax.texts}
    assert "+3.00\n±0.50" in texts and "+0.05\n±0.05" in texts
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_tg_bars_have_error_bars():
    import pandas as pd

    from ntlab.report.figures import tg_bar_figure

    frame = pd.DataFrame({"label": ["ew", "forkmerge"], "tg": [-1.0, 0.1],
                          "tg_err": [0.3, 0.35], "effect": ["hurts", "within_noise"]})  # fmt: skip
    fig = tg_bar_figure(frame)
    ax = fig.axes[0]
    bars = next(c for c in ax.containers if hasattr(c, "errorbar"))
    assert bars.errorbar is not None  # xerr drawn
    faded = [b for b in ax.patches if b.get_hatch()]
    assert len(faded) == 1 and faded[0].get_width() == 0.1


# --- the training curves of a train run --------------------------------------------------------


def test_a_train_run_keeps_its_stl_validation_curve_and_draws_it(runs):
    """`train` copies the STL run's target validation accuracy against the step into its run
    directory (the STL training may have come from the cache), and its training figure shows
    it beside the run's own, on the loss figure's step axis."""
    curve = pd.read_csv(runs / "ew" / "stl_metrics.csv")
    assert list(curve.columns) == ["step", "task", "split", "metric", "value"]
    assert set(curve["task"]) == {"optdigits"} and set(curve["split"]) == {"val"}
    # the STL run may come from the cache, trained with another --eval-every (it is not part
    # of the key with --select last): its own checks, ending at the last step
    steps = list(curve["step"])
    assert steps == sorted(steps) and steps[-1] == 12 and len(steps) >= 2
    results = json.loads((runs / "ew" / "results.json").read_text())
    assert curve["value"].iloc[-1] == pytest.approx(results["stl"]["val_score"])
    run = Run.load(runs / "ew")
    (spec,) = VIEWS.get("train").figures(run)
    figure = spec.build()
    labels = [line.get_label() for ax in figure.axes for line in ax.get_lines()]
    assert "val acc: optdigits (this run)" in labels and "val acc: optdigits (STL)" in labels
    plt.close(figure)


# --- no machine paths in a report ------------------------------------------------------------


def test_a_report_shows_no_absolute_path_of_the_machine(runs, tmp_path):
    """Run directories, the failed run's weights file and NTLAB_HOME are shown relative to
    the report (or as $NTLAB_HOME), never as absolute paths of the machine."""
    out = tmp_path / "reports" / "all.html"
    result = invoke("report", runs / "ew", runs / "fm", runs / "failed", "--out", out)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    root = os.path.commonpath([runs, tmp_path])
    assert root != os.sep and root not in page
    assert str(runs) not in page and str(tmp_path) not in page
    assert os.environ["NTLAB_HOME"] not in page
    shown = os.path.relpath(runs / "ew", out.parent)
    assert f"<dt>run directory</dt><dd>{shown}</dd>" in page
    assert f"cannot read weights file {os.path.relpath(runs / 'bad.pt', out.parent)}" in page
    # A command's own report shows its folder as the report's own.
    own = (runs / "ew" / "report.html").read_text()
    assert str(runs) not in own and "<dt>run directory</dt><dd>.</dd>" in own


def test_shown_paths_rewrite_only_paths(tmp_path, monkeypatch):
    from ntlab.report.page import ShownPaths

    monkeypatch.setenv("NTLAB_HOME", str(tmp_path / "home"))
    shown = ShownPaths(tmp_path / "reports")
    text = (
        f"<td>--out {tmp_path}/runs/a</td> cache {tmp_path}/home/cache/runs/k. "
        "see https://arxiv.org/abs/2301.12618, λ/(1+λ) = 1/16, /data/domainnet"
    )
    assert shown.text(text) == (
        "<td>--out ../runs/a</td> cache $NTLAB_HOME/cache/runs/k. "
        "see https://arxiv.org/abs/2301.12618, λ/(1+λ) = 1/16, /data/domainnet"
    )
    figure = "data:image/png;base64,AAAA" + str(tmp_path).replace("-", "A") + "/x=="
    assert shown.page(f'<img src="{figure}">') == f'<img src="{figure}">'
