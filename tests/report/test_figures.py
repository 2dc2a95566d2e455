"""What a reader of each figure relies on: λ on an ordered colour scale with a colour bar, a
t-SNE figure legible at the report's width, the training curves with the validation
accuracy of the run and of STL, runs grouped by target."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import LogNorm, Normalize, to_rgb

from ntlab.report import figures
from ntlab.report.page import DPI
from ntlab.report.views import Run, comparison
from ntlab.runs import write_json

GEOMETRIC = [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0]
REPORT_WIDTH_PX = 1052  # report.css: main is 1100 px wide with 24 px padding


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def lightness(color) -> float:
    """Relative luminance (sRGB, linearised): what an ordered colour map raises steadily."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(color)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def colorbars(fig) -> list:
    """The colour bars of a figure (their axes carry the colorbar attribute)."""
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def test_a_geometric_lambda_grid_gets_a_log_scale_and_any_other_a_linear_one():
    assert isinstance(figures.lam_scale(GEOMETRIC)[1], LogNorm)
    assert isinstance(figures.lam_scale([0.0, *GEOMETRIC])[1], LogNorm)  # λ = 0 is set apart
    linear = figures.lam_scale([0.0, 0.25, 0.5, 0.75, 1.0])[1]
    assert isinstance(linear, Normalize) and not isinstance(linear, LogNorm)
    assert (linear.vmin, linear.vmax) == (0.0, 1.0)
    assert [figures.lam_label(x) for x in (0.0625, 0.5, 1.0, 0.3)] == ["1/16", "1/2", "1", "0.3"]


def _gcs_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for lam in GEOMETRIC:
        for gcs in rng.uniform(-0.3, 0.3, 8):
            rows.append(
                {"lam": lam, "gcs": gcs, "tg": -lam * gcs, "tg_loss": lam * gcs, "aux_kind": "task"}
            )
    return pd.DataFrame(rows)


def test_gcs_colours_lambda_on_an_ordered_scale_with_a_colour_bar():
    fig = figures.gcs_figure(_gcs_table())
    ax = fig.axes[0]
    points = [c for c in ax.collections if len(c.get_offsets())]
    assert len(points) == len(GEOMETRIC)
    # Ordered: lightness rises with λ (a categorical palette jumps up and down).
    shades = [lightness(c.get_facecolor()[0]) for c in points]
    assert shades == sorted(shades) and shades[-1] - shades[0] > 0.4
    # λ = 1/16 and λ = 1, the two ends of the grid, look nothing alike.
    cmap, norm = figures.lam_scale(GEOMETRIC)
    assert np.allclose(points[0].get_facecolor()[0][:3], cmap(norm(1 / 16))[:3])
    (bar,) = colorbars(fig)
    assert "λ" in bar.get_ylabel()
    assert isinstance(bar._colorbar.norm, LogNorm)
    assert [t.get_text() for t in bar.get_yticklabels()] == ["1/16", "1/8", "1/4", "1/2", "1"]


def test_csd_colours_lambda_on_an_ordered_scale_with_stl_set_apart():
    table = pd.DataFrame(
        [
            {"lam": lam, "seed": seed, "csd": 0.1 + lam / 4 + seed / 100, "tg": -lam - seed / 10}
            for lam in (0.0, 1 / 16, 1 / 4, 1.0)
            for seed in (0, 1)
        ]
    )
    fig = figures.csd_figure(table)
    ax = fig.axes[0]
    markers = {c.get_label(): c.lines[0].get_color() for c in ax.containers}
    assert list(markers) == ["λ=0", "λ=1/16", "λ=1/4", "λ=1"]
    shades = [lightness(markers[k]) for k in ("λ=1/16", "λ=1/4", "λ=1")]
    assert shades == sorted(shades)
    assert to_rgb(markers["λ=0"]) == to_rgb(figures.LAM0_COLOR)  # grey: the STL reference
    (bar,) = colorbars(fig)
    assert "λ" in bar.get_ylabel()


def _tsne_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for lam in (0.0, 0.0625, 0.25, 1.0):
        parts = [("target-test", "optdigits", 60), ("target-train", "optdigits", 40)]
        if lam:
            parts += [("aux-train", "mnist", 20), ("aux-train", "syn", 20)]
        for source, domain, n in parts:
            for label in range(3):
                for x, y in rng.normal(label * 5, 1, (n // 3, 2)):
                    rows.append(
                        {"lam": lam, "x": x, "y": y, "source": source, "label": label,
                         "domain": domain}
                    )  # fmt: skip
    return pd.DataFrame(rows)


def test_tsne_is_legible_at_the_report_width():
    fig = figures.tsne_figure(_tsne_table(), "optdigits")
    width_px = fig.get_figwidth() * DPI
    assert width_px <= REPORT_WIDTH_PX  # drawn at the size shown, not shrunk by the page
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4
    fig.canvas.draw()  # the constrained layout places the panels
    assert panels[0].get_position().width * width_px > 400  # two panels a row, not four
    # Markers large enough to see.
    for ax in panels:
        for c in ax.collections:
            assert min(c.get_sizes()) >= 16
    # The legend is outside every panel.
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    for ax in panels:
        assert not box.overlaps(ax.get_window_extent(renderer))
    # Target train and target test differ in colour and shape; each auxiliary domain too.
    styles = {}
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
        styles[text.get_text()] = (to_rgb(handle.get_color()), handle.get_marker())
    train, test = styles["target train (optdigits)"], styles["target test (optdigits)"]
    assert train[0] != test[0] and train[1] != test[1]
    mnist, syn = styles["auxiliary train (mnist)"], styles["auxiliary train (syn)"]
    assert len({train, test, mnist, syn}) == 4 and mnist[0] != syn[0]
    assert legend.get_texts()[0].get_fontsize() >= 9


def test_tsne_of_a_table_without_domains_still_draws():
    table = _tsne_table().drop(columns="domain")
    fig = figures.tsne_figure(table, "optdigits")
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "target test (optdigits)" in texts and "auxiliary train (auxiliary)" in texts


def _metrics() -> pd.DataFrame:
    rows = [
        {"step": s, "task": t, "split": "train", "metric": "loss", "value": v / s}
        for s in (10, 20, 30)
        for t, v in (("optdigits", 2.0), ("mnist", 1.0))
    ]
    rows += [
        {"step": s, "task": "optdigits", "split": "val", "metric": "acc", "value": a}
        for s, a in ((10, 70.0), (20, 80.0), (30, 85.0))
    ]
    return pd.DataFrame(rows)


def test_training_figure_shows_loss_and_the_validation_of_the_run_and_of_stl():
    stl = pd.DataFrame(
        [
            {"step": s, "task": "optdigits", "split": "val", "metric": "acc", "value": a}
            for s, a in ((10, 75.0), (20, 82.0), (30, 88.0))
        ]
    )
    fig = figures.training_figure(_metrics(), "optdigits", stl)
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_yscale() == "log"
    assert "validation accuracy" in acc_ax.get_ylabel()
    assert loss_ax.get_shared_x_axes().joined(loss_ax, acc_ax)  # one x axis: the step
    curves = {line.get_label(): line for line in acc_ax.get_lines()}
    own = curves["val acc: optdigits (this run)"]
    base = curves["val acc: optdigits (STL)"]
    assert list(own.get_ydata()) == [70.0, 80.0, 85.0]
    assert list(base.get_xdata()) == [10, 20, 30] and list(base.get_ydata()) == [75, 82, 88]
    legend = loss_ax.get_legend()
    assert {t.get_text() for t in legend.get_texts()} >= {own.get_label(), base.get_label()}


def test_training_figure_without_validation_rows_has_the_loss_alone():
    metrics = _metrics()
    fig = figures.training_figure(metrics[metrics["split"] == "train"], "optdigits")
    assert len(fig.axes) == 1


def _fake_run(path, target, tg, command="train"):
    path.mkdir()
    write_json(
        path / "config.json",
        {"command": command, "train": {"target": target, "method": "ew"}},
    )
    write_json(path / "status.json", {"state": "completed"})
    write_json(
        path / "results.json",
        {"target": target, "method": "ew", "test_score": 90.0 + tg, "transfer_gain": tg},
    )
    return Run.load(path)


def test_several_runs_are_grouped_by_target_then_ranked(tmp_path):
    runs = [
        _fake_run(tmp_path / "a", "mnist", -1.0),
        _fake_run(tmp_path / "b", "syn", 2.0),
        _fake_run(tmp_path / "c", "mnist", 3.0),
        _fake_run(tmp_path / "d", "syn", -0.5),
        _fake_run(tmp_path / "e", "mnist", 0.5),
    ]
    frame, specs = comparison(runs)
    assert list(frame["target"]) == ["mnist"] * 3 + ["syn"] * 2
    assert list(frame["run"]) == ["c", "e", "a", "b", "d"]
    assert list(frame["rank"]) == ["1", "2", "3", "1", "2"]
    (bars,) = specs
    fig = bars.build()
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    # Bottom-up: syn's bars under its heading, then mnist's; best of each group on top.
    assert ticks == [
        "d (ew)", "b (ew)", "target syn", "a (ew)", "e (ew)", "c (ew)", "target mnist",
    ]  # fmt: skip


def test_a_report_of_several_runs_lists_them_by_target(tmp_path):
    from ntlab.report.page import render

    runs = [
        _fake_run(tmp_path / "a", "mnist", -1.0),
        _fake_run(tmp_path / "b", "syn", 2.0),
        _fake_run(tmp_path / "c", "mnist", 3.0),
    ]
    page = render(runs, base=tmp_path)
    sections = [page.index(f"<h2>{name} ") for name in ("a", "c", "b")]
    assert sections == sorted(sections)


def _simplex(resolution: int, tg) -> pd.DataFrame:
    rows = []
    for i in range(resolution + 1):
        for j in range(resolution + 1 - i):
            w = (i / resolution, j / resolution, (resolution - i - j) / resolution)
            value = tg(w)
            sign = "helps" if value > 0 else "hurts"
            effect = "within_noise" if abs(value) <= 2 * 0.5 else sign
            rows.append({"w0": w[0], "w1": w[1], "w2": w[2], "tg": value, "tg_se": 0.5,
                         "effect": effect, "best": w == (1.0, 0.0, 0.0)})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("tg", "hatched"),
    [(lambda w: 4 * w[1] - 4 * w[2], True), (lambda w: 0.1 * w[1], True), (lambda w: 3.0, False)],
)
def test_ternary_hatches_the_merges_within_noise(tg, hatched):
    """A ternary map hatches where the merges' TG is within noise, says how many in its title
    and legend; a table of older runs without verdicts draws without them."""
    table = _simplex(6, tg)
    within = int((table["effect"] == "within_noise").sum())
    fig = figures.ternary_figure(table, ["optdigits=1", "optdigits=1,mnist=1", "optdigits=1,syn"])
    ax = fig.axes[0]
    hatches = [c for c in ax.collections if c.get_gid() == "within-noise"]
    assert bool(hatches) == hatched
    assert f"{within} of {len(table)} merges within noise" in fig.texts[0].get_text()
    if hatched:
        assert "within noise" in ax.get_legend().get_texts()[0].get_text()
    plt.close(fig)
    old = figures.ternary_figure(table.drop(columns=["effect", "tg_se"]), ["a", "b", "c"])
    assert not [c for c in old.axes[0].collections if c.get_gid() == "within-noise"]
    assert "within noise" not in old.texts[0].get_text()
    plt.close(old)
