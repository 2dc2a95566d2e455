"""Figures: each takes a tidy DataFrame and returns a matplotlib Figure (no I/O, no state)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402
from fractions import Fraction  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Colormap, ListedColormap, LogNorm, Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ntlab.metrics import PERCENT_METRICS, metric_label  # noqa: E402

# Okabe-Ito: distinguishable under the common colour-vision deficiencies. TG maps use RdBu
# (diverging, colour-blind safe) centred on 0.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "svg.hashsalt": "ntlab",  # stable ids in SVG output
}
matplotlib.rcParams.update(STYLE)


def score_words(metric: str | None) -> str:
    """The target's primary metric in words: `accuracy` (classification), `mIoU`, `abs err`."""
    return "accuracy" if (metric or "acc") == "acc" else metric_label(metric)


def _unit_suffix(metric: str) -> str:
    return " (%)" if metric in PERCENT_METRICS else " (°)" if metric.endswith("_angle") else ""


def direction_arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def direction_words(higher_is_better: bool) -> str:
    return "higher is better" if higher_is_better else "lower is better"


def tg_units(metric: str | None = "acc", higher_is_better: bool = True, split: str = "test") -> str:
    """What a TG is measured in: `test accuracy points`, `test mIoU points`, `test mean angle
    degrees; lower is better: STL − run` (a TG > 0 always means the auxiliary tasks helped)."""
    metric = metric or "acc"
    units = "points" if metric in PERCENT_METRICS else ""
    units = "degrees" if metric.endswith("_angle") else units
    text = f"{split} {score_words(metric)}" + (f" {units}" if units else "")
    return text if higher_is_better else f"{text}; lower is better: STL − run"


def tg_axis_label(metric: str | None = "acc", higher_is_better: bool = True) -> str:
    return f"TG vs STL ({tg_units(metric, higher_is_better)})"


def score_axis_label(metric: str | None, higher_is_better: bool, what: str) -> str:
    """`target validation accuracy (%) ↑`, `validation abs err of the merge ↓`: `what` with
    `{}` where the metric goes."""
    metric = metric or "acc"
    words = what.format(score_words(metric))
    return f"{words}{_unit_suffix(metric)} {direction_arrow(higher_is_better)}"


def lambda_figure(merges: pd.DataFrame) -> Figure:
    """Λ* per merge round, stacked by branch (from a `merges.csv` table)."""
    table = merges.pivot_table(index="round", columns="branch", values="lambda", fill_value=0.0)
    labels = merges.drop_duplicates("branch").set_index("branch")["task_weights"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(table) + 2.5), 3.4), layout="constrained")
    bottom = pd.Series(0.0, index=table.index)
    for i, branch in enumerate(table.columns):
        ax.bar(
            table.index,
            table[branch],
            bottom=bottom,
            color=PALETTE[i % len(PALETTE)],
            label=f"branch {branch}: {labels[branch]}",
            width=0.8,
        )
        bottom += table[branch]
    ax.set_xlabel("merge round (its step)")
    ax.set_ylabel("Λ* (share of the merged model)")
    ax.set_ylim(0, 1)
    steps = merges.drop_duplicates("round").set_index("round")["step"]
    # rounds counted from 1 as the terminal's `Λ* round 1 (step 75)` lines count them
    ax.set_xticks(list(table.index), [f"{r + 1}\n({steps[r]})" for r in table.index])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), fontsize=8, frameon=False)
    ax.set_title("ForkMerge: merge weights per round", fontsize=10)
    return fig


# λ is ordered, so figures that colour by λ use one sequential, perceptually uniform map
# (viridis, cut before its palest yellow so every λ shows on white) with a colour bar.
LAM_CMAP = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.9, 256)), "viridis")
LAM0_COLOR = "0.45"  # λ = 0 (STL) on a log scale, which cannot hold 0


def lam_label(lam: float) -> str:
    """λ as people write it: 1/16 rather than 0.0625 where it is a fraction with a power of
    two below (the paper's grids: 1/16, 1/8, …)."""
    frac = Fraction(float(lam)).limit_denominator(64)
    power_of_two = frac.denominator & (frac.denominator - 1) == 0
    if frac.denominator > 1 and power_of_two and math.isclose(float(frac), lam, rel_tol=1e-9):
        return f"{frac.numerator}/{frac.denominator}"
    return f"{lam:g}"


def is_geometric(lams: list[float]) -> bool:
    """Whether positive λ values form a geometric grid spanning at least a factor 4
    (e.g. 1/16, 1/8, …, 1): such a grid is shown on a log scale."""
    pos = sorted({float(x) for x in lams})
    if len(pos) < 2 or pos[0] <= 0 or pos[-1] / pos[0] < 4:
        return False
    ratios = np.diff(np.log(pos))
    return bool(np.allclose(ratios, ratios[0], rtol=0.05))


def lam_scale(lams) -> tuple[Colormap, Normalize]:
    """The colour map and norm of a λ grid: log when its λ > 0 are geometric, else linear."""
    values = sorted({float(x) for x in lams})
    pos = [x for x in values if x > 0]
    if is_geometric(pos):
        return LAM_CMAP, LogNorm(pos[0], pos[-1])
    low, high = (values[0], values[-1]) if values else (0.0, 1.0)
    if high <= low:
        low, high = (0.0, high) if high > 0 else (0.0, 1.0)
    return LAM_CMAP, Normalize(low, high)


def lam_colors(lams) -> dict[float, tuple]:
    """The colour of each λ on its scale; λ = 0 is grey where the scale is logarithmic."""
    cmap, norm = lam_scale(lams)
    log = isinstance(norm, LogNorm)
    return {
        float(x): (matplotlib.colors.to_rgba(LAM0_COLOR) if log and x <= 0 else cmap(norm(x)))
        for x in lams
    }


def lam_colorbar(fig: Figure, lams, ax, **kwargs):
    """A colour bar labelled λ with a tick at every λ of the grid (λ = 0 left off a log
    scale: it has its own grey mark in the figure)."""
    from matplotlib.cm import ScalarMappable

    cmap, norm = lam_scale(lams)
    ticks = sorted({float(x) for x in lams if not isinstance(norm, LogNorm) or x > 0})
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="λ", **kwargs)
    bar.minorticks_off()
    bar.set_ticks(ticks, labels=[lam_label(x) for x in ticks])
    if isinstance(norm, LogNorm):
        bar.ax.set_ylabel("λ (log scale)")
    return bar


def gcs_figure(
    table: pd.DataFrame, metric: str | None = "acc", higher_is_better: bool = True
) -> Figure:
    """GCS vs one-step TG per λ > 0 (from `gcs.csv`), with a cubic fit per λ (paper Fig. 2):
    left in the target's validation metric (the paper's TG: accuracy), right in validation
    loss. λ is coloured on an ordered scale, with a colour bar."""
    lams = sorted(float(lam) for lam in table["lam"].unique() if lam > 0)
    colors = lam_colors(lams)
    kind = table["aux_kind"].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), layout="constrained")
    panels = [
        ("tg", f"TG of one step ({tg_units(metric, higher_is_better, 'val')})"),
        ("tg_loss", "TG of one step (val loss decrease)"),
    ]
    for ax, (column, ylabel) in zip(axes, panels):
        for lam in lams:
            group = table[table["lam"] == lam]
            ax.scatter(
                group["gcs"],
                group[column],
                s=16,
                alpha=0.6,
                color=colors[lam],
                linewidths=0,
                label=f"λ={lam_label(lam)}",
            )
            if group["gcs"].nunique() >= 4:
                coef = np.polyfit(group["gcs"], group[column], 3)
                grid = np.linspace(group["gcs"].min(), group["gcs"].max(), 100)
                ax.plot(grid, np.polyval(coef, grid), color=colors[lam], linewidth=1.8)
        ax.axhline(0, color="0.4", linewidth=0.8, linestyle="--")
        ax.axvline(0, color="0.4", linewidth=0.8, linestyle="--")
        aux = "weight decay (½‖θ‖²)" if kind == "weight-decay" else "auxiliary tasks"
        ax.set_xlabel(f"gradient cosine similarity, target vs {aux}")
        ax.set_ylabel(ylabel)
    if lams:
        lam_colorbar(fig, lams, list(axes), shrink=0.9, pad=0.02)
    fig.suptitle(
        "Gradient conflict vs transfer gain of one step, one colour and cubic fit per λ "
        "(left of 0: conflicting; above 0: helps)",
        fontsize=10,
    )
    return fig


def csd_figure(table: pd.DataFrame) -> Figure:
    """CSD vs TG per λ, mean ± seed std (from `csd.csv`; paper Fig. 3b); λ on an ordered
    colour scale with a colour bar, each point labelled with its λ."""
    grouped = table.groupby("lam")[["csd", "tg"]]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    std["tg"] = _tg_spread(table, "lam")  # one seed: TG's test-set SE
    lams = [float(x) for x in mean.index]
    colors = lam_colors(lams)
    fig, ax = plt.subplots(figsize=(6.8, 4.4), layout="constrained")
    ax.plot(mean["csd"], mean["tg"], color="0.75", linewidth=1, zorder=1)
    for lam, row in mean.iterrows():
        lam = float(lam)
        ax.errorbar(
            row["csd"],
            row["tg"],
            xerr=std.loc[lam, "csd"],
            yerr=std.loc[lam, "tg"],
            fmt="o",
            markersize=8,
            color=colors[lam],
            ecolor=colors[lam],
            elinewidth=1.2,
            capsize=3,
            zorder=2,
            label=f"λ={lam_label(lam)}",
        )
        ax.annotate(
            "λ=0 (STL)" if lam == 0 else f"λ={lam_label(lam)}",
            (row["csd"], row["tg"]),
            xytext=(7, 6),
            textcoords="offset points",
            fontsize=8,
            color="0.2",
        )
    positive = [x for x in lams if x > 0]
    if positive:
        lam_colorbar(fig, lams, ax, shrink=0.9, pad=0.02)
    ax.axhline(0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_xlabel("confidence score discrepancy on target test (1 − mean max-softmax)")
    ax.set_ylabel("TG vs λ = 0 (test accuracy points)")
    seeds = table["seed"].nunique()
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed, TG ± test-set SE"
    ax.set_title(f"Distribution shift vs transfer gain ({spread})", fontsize=10)
    ax.margins(x=0.15, y=0.15)
    return fig


# t-SNE: the target test points are the grey reference cloud; target training points and each
# auxiliary domain get a colour and a shape of their own.
TSNE_WIDTH_IN = 1040 / 130  # the report's content width at its 130 dpi: shown unscaled
TSNE_TEST = {"color": "0.62", "marker": "o", "s": 16, "alpha": 0.45}
TSNE_TRAIN = {"color": "#0072B2", "marker": "^", "s": 26, "alpha": 0.85}
TSNE_AUX = [
    ("#E69F00", "s"),
    ("#009E73", "D"),
    ("#CC79A7", "P"),
    ("#D55E00", "X"),
    ("#56B4E9", "v"),
    ("#000000", "*"),
]


def _tsne_domains(table: pd.DataFrame, target: str | None) -> pd.Series:
    """Each point's domain: the `domain` column, or (tables without it) the target's name
    and `auxiliary` for every auxiliary point."""
    if "domain" in table:
        return table["domain"].astype(str)
    return table["source"].map({"aux-train": "auxiliary"}).fillna(target or "target")


def _tsne_groups(table: pd.DataFrame, domain: pd.Series) -> list[tuple[str, str, dict]]:
    """(source, domain, style) of every group drawn, in drawing order: test points first."""
    target = next(iter(domain[table["source"] != "aux-train"]), "target")
    groups = [
        ("target-test", target, {**TSNE_TEST, "label": f"target test ({target})"}),
        ("target-train", target, {**TSNE_TRAIN, "label": f"target train ({target})"}),
    ]
    aux = sorted(set(domain[table["source"] == "aux-train"]))
    for i, name in enumerate(aux):
        color, marker = TSNE_AUX[i % len(TSNE_AUX)]
        style = {"color": color, "marker": marker, "s": 24, "alpha": 0.8}
        groups.append(("aux-train", name, {**style, "label": f"auxiliary train ({name})"}))
    return groups


def tsne_figure(table: pd.DataFrame, target: str | None = None) -> Figure:
    """One t-SNE panel per λ (from `tsne.csv`; paper Fig. 3a): target test points in grey,
    target training points and each auxiliary domain in a colour and shape of its own, the
    class digits written at the centre of their test points. Drawn at the report's width."""
    from matplotlib import patheffects

    lams = sorted(table["lam"].unique())
    domain = _tsne_domains(table, target)
    groups = _tsne_groups(table, domain)
    ncols = min(len(lams), 2 if len(lams) <= 4 else 3)
    nrows = math.ceil(len(lams) / ncols)
    panel = TSNE_WIDTH_IN / ncols
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(TSNE_WIDTH_IN, panel * 0.86 * nrows + 0.8),
        layout="constrained",
        squeeze=False,
    )
    for ax in axes.flat[len(lams) :]:
        ax.set_visible(False)
    outline = [patheffects.withStroke(linewidth=2.5, foreground="white")]
    for ax, lam in zip(axes.flat, lams):
        part = table[table["lam"] == lam]
        for source, name, style in groups:
            rows = part[(part["source"] == source) & (domain[part.index] == name)]
            if source == "aux-train" and not len(rows):
                continue
            ax.scatter(rows["x"], rows["y"], linewidths=0, **style)
        test = part[part["source"] == "target-test"]
        for label, points in test.groupby("label"):
            ax.text(
                points["x"].median(), points["y"].median(), str(label), fontsize=10,
                fontweight="bold", ha="center", va="center", color="0.15", path_effects=outline,
            )  # fmt: skip
        ax.set_title(f"λ = {lam_label(lam)} (auxiliary share {lam / (1 + lam):.0%})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # a closed, light frame: t-SNE axes have no units
            spine.set_visible(True)
            spine.set_color("0.75")
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            marker=style["marker"],
            linestyle="",
            color=style["color"],
            markersize=8,
            label=style["label"],
        )  # fmt: skip
        for _, _, style in groups
    ]
    handles.append(
        Line2D([], [], marker="$0$", linestyle="", color="0.15", markersize=8,
               label="class digit (centre of its test points)")
    )  # fmt: skip
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 3),
        fontsize=9,
        frameon=False,
    )
    return fig


def _tg_spread(table: pd.DataFrame, by: str) -> pd.Series:
    """The ± of TG per group: the seed std (ddof 1) with several seeds, the mean test-set SE
    (`tg_se`) of a group with one seed, 0 where neither is known."""
    grouped = table.groupby(by)
    std = grouped["tg"].std(ddof=1)
    if "tg_se" in table:
        se = pd.to_numeric(table["tg_se"], errors="coerce").groupby(table[by]).mean()
        std = std.where(grouped["tg"].count() > 1, se)
    return std.fillna(0.0)


def sweep_figure(
    table: pd.DataFrame,
    forkmerge: pd.DataFrame | None = None,
    grid_search: float | None = None,
    metric: str | None = "acc",
    higher_is_better: bool = True,
) -> Figure:
    """TG vs λ, mean ± seed std with each seed faint (from `sweep.csv`); ForkMerge with the
    same budget as a horizontal band, and the grid-search baseline's mean TG as a dashed
    line, when given."""
    lams = sorted(table["lam"].unique())
    pos = {lam: i for i, lam in enumerate(lams)}
    grouped = table.groupby("lam")["tg"]
    mean, std = grouped.mean(), _tg_spread(table, "lam")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    ax.scatter(
        table["lam"].map(pos), table["tg"], s=12, color=PALETTE[0], alpha=0.3, label="one seed"
    )
    x = [pos[lam] for lam in mean.index]
    seeds = table["seed"].nunique()
    spread = "± std" if seeds > 1 else "± test-set SE"
    ax.errorbar(
        x, mean, yerr=std, fmt="-o", color=PALETTE[0], capsize=3, label=f"fixed λ (mean {spread})"
    )
    if forkmerge is not None and len(forkmerge):
        m = forkmerge["tg"].mean()
        s = float(_tg_spread(forkmerge.assign(one=0), "one").iloc[0])
        ax.axhspan(m - s, m + s, color=PALETTE[1], alpha=0.25, linewidth=0)
        ax.axhline(m, color=PALETTE[1], linewidth=2, label=f"ForkMerge (mean {spread})")
    if grid_search is not None:
        ax.axhline(
            grid_search, color=PALETTE[3], linewidth=1.5, linestyle="-.",
            label="grid search (λ chosen on val)",
        )  # fmt: skip
    ax.axhline(0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(lams)), [lam_label(lam) for lam in lams])
    ax.set_xlabel("λ, weight of the mixed auxiliary loss (λ = 0: STL)")
    ax.set_ylabel(tg_axis_label(metric, higher_is_better))
    ax.set_title(f"Sweeping the task weight ({seeds} seed{'s' if seeds > 1 else ''})", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="best")
    return fig


WITHIN_NOISE_HATCH = "///"


def _cell_noise(cell: pd.DataFrame) -> tuple[float | None, str | None]:
    """(the ± of a pairwise cell, its effect): seed std with several seeds, the test-set SE
    with one (`tg_se`); (None, None) where a one-seed cell has no SE (an older table)."""
    from ntlab.errors import NtlabError
    from ntlab.metrics import entry_fields, noise_of

    try:
        fields = entry_fields(
            cell["tg"],
            cell["tg_se"] if "tg_se" in cell else None,
            cell["tg_se_kind"] if "tg_se_kind" in cell else None,
        )
    except NtlabError:
        return None, None
    return noise_of(fields), fields["effect"]


def pairwise_figure(
    table: pd.DataFrame, method: str, limit: float | None = None, tg_label: str | None = None
) -> Figure:
    """Heatmap of TG per (target row, auxiliary column), seed mean ± its noise in each cell
    (the seed std with several seeds, the paired test-set SE with one), diverging colours
    centred on 0 and symmetric to ±`limit` (default: the largest |TG|; pass one limit to
    compare methods), from `pairwise.csv`. Cells within noise are faded and hatched; the
    colour bar says what TG is measured in (`tg_label`, default test accuracy points)."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Patch

    part = table[table["method"] == method]
    domains = list(dict.fromkeys([*part["target"], *part["aux"]]))
    mean = part.groupby(["target", "aux"])["tg"].mean().unstack()
    mean = mean.reindex(index=domains, columns=domains)
    noise = {key: _cell_noise(cell) for key, cell in part.groupby(["target", "aux"])}
    limit = limit or max(1.0, float(mean.abs().max().max()))
    n = len(domains)
    fig, ax = plt.subplots(figsize=(1.15 * n + 2.6, 0.95 * n + 1.9), layout="constrained")
    image = ax.imshow(
        mean.to_numpy(dtype=float), cmap="RdBu", norm=TwoSlopeNorm(0.0, -limit, limit)
    )
    within = hurt = helped = 0
    for i, t in enumerate(domains):
        for j, a in enumerate(domains):
            value = mean.loc[t, a]
            if pd.isna(value):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.85"))
                continue
            spread, effect = noise.get((t, a), (None, None))
            text = f"{value:+.2f}" + ("" if spread is None else f"\n±{spread:.2f}")
            faded = effect == "within_noise"
            hurt += effect == "hurts"
            helped += effect == "helps"
            if faded:
                within += 1
                ax.add_patch(
                    plt.Rectangle(
                        (j - 0.5, i - 0.5), 1, 1, facecolor=(1, 1, 1, 0.55), edgecolor="0.45",
                        hatch=WITHIN_NOISE_HATCH, linewidth=0, gid="within-noise",
                    )
                )  # fmt: skip
            dark = abs(value) > 0.6 * limit and not faded
            ax.text(
                j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black"
            )
    ax.set_xticks(range(n), domains, rotation=30, ha="right")
    ax.set_yticks(range(n), domains)
    ax.set_xlabel("auxiliary domain")
    ax.set_ylabel("target domain")
    label = {"ew": "equal weighting", "forkmerge": "ForkMerge"}.get(method, method)
    total = int(mean.notna().sum().sum())
    ax.set_title(
        f"TG of {label}, {total} pairs: {hurt} hurt, {helped} help, {within} within noise",
        fontsize=10,
    )
    seeds = part["seed"].nunique()
    basis = f"± seed std, {seeds} seeds" if seeds > 1 else "± paired test-set SE, 1 seed"
    ax.legend(
        handles=[
            Patch(
                facecolor="white",
                edgecolor="0.45",
                hatch=WITHIN_NOISE_HATCH,
                label=f"within noise (|TG| ≤ 2 × noise; {basis})",
            )  # fmt: skip
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        fontsize=8,
        frameon=False,
    )
    fig.colorbar(image, ax=ax, label=tg_label or tg_axis_label(), shrink=0.85)
    return fig


def ternary_figure(
    table: pd.DataFrame,
    labels: list[str],
    metric: str | None = "acc",
    higher_is_better: bool = True,
) -> Figure:
    """TG of Σ_b Λ_b θ_b over the simplex (from `ternary.csv`), corners labelled with the
    branches, the point chosen on validation marked."""
    import mpltern  # noqa: F401 - registers the "ternary" projection
    from matplotlib.colors import TwoSlopeNorm

    limit = max(0.5, float(table["tg"].abs().max()))
    fig = plt.figure(figsize=(6.2, 5.4), layout="constrained")
    ax = fig.add_subplot(projection="ternary")
    image = ax.tripcolor(
        table["w0"],
        table["w1"],
        table["w2"],
        table["tg"],
        cmap="RdBu",
        norm=TwoSlopeNorm(0.0, -limit, limit),
        shading="gouraud",
        rasterized=True,
    )
    best = table[table["best"]]
    ax.scatter(
        best["w0"], best["w1"], best["w2"], marker="*", s=180, color="black",
        edgecolors="white", linewidths=0.8, label="best on validation", zorder=5,
        clip_on=False,  # a corner (one branch alone) is often the best point
    )  # fmt: skip
    hatched = _hatch_within_noise(ax, table)
    for axis in (ax.taxis, ax.laxis, ax.raxis):
        axis.set_tick_params(labelsize=8)
    # Corners of the triangle in axes fractions: top Λ₀ = 1, bottom left Λ₁, bottom right Λ₂.
    corners = [((0.5, 1.0), "center", "bottom", (0, 22)), ((0.0, 0.0), "center", "top", (0, -30))]
    corners.append(((1.0, 0.0), "center", "top", (0, -30)))
    for b, (point, ha, va, offset) in enumerate(corners):
        ax.annotate(
            f"Λ{'₀₁₂'[b]} = 1: branch {b}, {labels[b]}",
            point,
            xycoords="axes fraction",
            xytext=offset,
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=8,
            fontweight="bold",
        )
    cax = ax.inset_axes([1.08, 0.1, 0.04, 0.8], transform=ax.transAxes)
    fig.colorbar(image, cax=cax, label=tg_axis_label(metric, higher_is_better))
    title = "Merging three branches: TG over the simplex (★ chosen on validation)"
    if hatched is not None:
        title += f"\n{hatched} of {len(table)} merges within noise (hatched)"
    fig.suptitle(title, fontsize=10)
    return fig


def _hatch_within_noise(ax, table: pd.DataFrame) -> int | None:
    """Hatch the part of a ternary map where the merges' TG is within noise (`effect` of
    `ternary.csv`); the number of such merges, or None for a table without verdicts."""
    if "effect" not in table:
        return None
    within = (table["effect"] == "within_noise").to_numpy(dtype=float)
    count = int(within.sum())
    if count == 0:
        return 0
    if count == len(within):  # a constant field has no contour: hatch the whole triangle
        within[0] = 0.99  # still above the level, but the field is no longer constant
    ax.tricontourf(
        table["w0"], table["w1"], table["w2"], within, levels=[0.5, 1.5], colors="none",
        hatches=[WITHIN_NOISE_HATCH], zorder=3, gid="within-noise",
    )  # fmt: skip
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(facecolor="white", edgecolor="0.45", hatch=WITHIN_NOISE_HATCH,
                       label="within noise (|TG| ≤ 2 × paired test-set SE)")],
        loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8, frameon=False,
    )  # fmt: skip
    return count


def _plain_log_ticks(ax, values: pd.Series) -> None:
    """Log-axis ticks written 0.5, 1, 2 (not 5 × 10⁻¹); over two decades or less the 2s and
    5s between the powers of ten are labelled too."""
    from matplotlib.ticker import FuncFormatter

    positive = values[values > 0]
    decades = math.log10(positive.max() / positive.min()) if len(positive) else 0.0

    def minor(v: float, _pos) -> str:
        lead = round(v / 10 ** math.floor(math.log10(v) + 1e-9))
        return f"{v:g}" if decades <= 2 and lead in (2, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _val_curve(metrics: pd.DataFrame | None, target: str, metric: str = "acc") -> pd.DataFrame:
    """The target's validation curve in `metric` (its primary) from a tidy metrics table."""
    if metrics is None or not len(metrics):
        return pd.DataFrame(columns=["step", "value"])
    rows = metrics[
        (metrics["task"] == target) & (metrics["split"] == "val") & (metrics["metric"] == metric)
    ]
    return rows.sort_values("step")


def training_figure(
    metrics: pd.DataFrame,
    target: str | None = None,
    stl: pd.DataFrame | None = None,
    metric: str | None = "acc",
    higher_is_better: bool = True,
) -> Figure:
    """Training loss per task (and per branch, for ForkMerge) against step (left axis, log
    scale) from a `metrics.csv` table, the first task drawn (the target) in bold; on the
    right axis the target's validation curve in its primary `metric` (accuracy for a
    classifier) of this run and of its STL baseline (`stl`: the rows of `stl_metrics.csv`),
    when there are any, labelled with the metric and its direction."""
    metric = metric or "acc"
    loss = metrics[(metrics["split"] == "train") & (metrics["metric"] == "loss")]
    fig, ax = plt.subplots(figsize=(7.6, 3.9), layout="constrained")
    for i, (task, group) in enumerate(loss.groupby("task", sort=False)):
        group = group.sort_values("step")
        ax.plot(
            group["step"],
            group["value"],
            color=PALETTE[i % len(PALETTE)],
            linewidth=2.2 if i == 0 else 1.3,
            label=f"train loss: {task}",
        )
    ax.set_yscale("log")
    _plain_log_ticks(ax, loss["value"])
    ax.set_xlabel("training step")
    loss_kind = "cross-entropy" if metric == "acc" else "each task's own loss"
    ax.set_ylabel(f"training loss ({loss_kind}, log scale)")
    handles, labels = ax.get_legend_handles_labels()
    own, base = _val_curve(metrics, target or "", metric), _val_curve(stl, target or "", metric)
    short = "val acc" if metric == "acc" else f"val {metric_label(metric)}"
    title = "Training loss per task"
    if len(own) or len(base):
        acc = ax.twinx()
        acc.spines["right"].set_visible(True)
        if len(own):
            acc.plot(own["step"], own["value"], "-o", color="black", linewidth=1.8,
                     markersize=4.5, label=f"{short}: {target} (this run)")  # fmt: skip
        if len(base):
            acc.plot(base["step"], base["value"], "--s", color="0.45", linewidth=1.6,
                     markersize=4.5, label=f"{short}: {target} (STL)")  # fmt: skip
        acc.set_ylabel(score_axis_label(metric, higher_is_better, "target validation {}"))
        more_handles, more_labels = acc.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
        title = f"Training loss per task and the target's validation {score_words(metric)}"
    ax.set_title(title, fontsize=10)
    ax.legend(handles, labels, frameon=False, loc="center left", bbox_to_anchor=(1.1, 0.5))
    return fig


def search_figure(
    search: pd.DataFrame, metric: str | None = "acc", higher_is_better: bool = True
) -> Figure:
    """The merge-search landscape of every ForkMerge round (from `search.csv`): the target's
    validation score (its primary `metric`) of each candidate Λ, the chosen one starred.
    With two branches the x axis is Λ₁ (the auxiliary branch's share); with more it is the
    order the search tried them."""
    weights = search["weights"].astype(str).str.split(";")
    two = bool(len(weights)) and weights.map(len).max() == 2
    x = weights.map(lambda w: float(w[1])) if two else search["candidate"]
    frame = search.assign(x=x)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for i, (rnd, group) in enumerate(frame.groupby("round")):
        group = group.sort_values("x")
        color = PALETTE[i % len(PALETTE)]
        step = int(group["step"].iloc[0])
        ax.plot(group["x"], group["val_score"], "-o", color=color, markersize=3.5, linewidth=1.2,
                label=f"round {rnd} (step {step})")  # fmt: skip
        chosen = group[group["chosen"].astype(str) == "True"]
        ax.scatter(chosen["x"], chosen["val_score"], marker="*", s=160, color=color,
                   edgecolors="black", linewidths=0.6, zorder=5)  # fmt: skip
    ax.set_xlabel("Λ₁, share of the auxiliary branch" if two else "candidate (search order)")
    ax.set_ylabel(score_axis_label(metric, higher_is_better, "validation {} of the merge"))
    ax.set_title("Merge search per round (★ chosen Λ*)", fontsize=10)
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def tg_bar_figure(
    frame: pd.DataFrame,
    title: str = "Transfer gain per run (hatched: within noise)",
    xlabel: str | None = None,
) -> Figure:
    """TG per labelled row (columns `label`, `tg` and optionally `tg_err`, the ± of each TG:
    its seed std or, with one seed, its test-set SE; `tg_std` is read as `tg_err` too) as
    horizontal bars, sorted, gains in blue and losses in red, with that ± as error bars.
    With an `effect` column, bars within noise are drawn faded and hatched. With a `group`
    column (the target) the rows are grouped under a heading per group, groups in the order
    they first come from the top, each sorted. `xlabel` says what TG is measured in
    (default: test accuracy points)."""
    grouped = "group" in frame and frame["group"].nunique() > 1
    if grouped:
        order = {g: i for i, g in reversed(list(enumerate(frame["group"])))}
        frame = frame.assign(_g=-frame["group"].map(order)).sort_values(["_g", "tg"])
    else:
        frame = frame.sort_values("tg")
    column = "tg_err" if "tg_err" in frame else "tg_std" if "tg_std" in frame else None
    err = pd.to_numeric(frame[column], errors="coerce").fillna(0.0) if column else None
    err = err if err is not None and (err > 0).any() else None
    colors = ["#2166AC" if v >= 0 else "#B2182B" for v in frame["tg"]]
    heads = frame["group"].nunique() if grouped else 0
    fig, ax = plt.subplots(figsize=(6.4, 0.42 * (len(frame) + heads) + 1.4), layout="constrained")
    if not grouped:
        bars = ax.barh(frame["label"], frame["tg"], xerr=err, color=colors, capsize=3, height=0.6)
    else:  # bottom-up: each group's bars, then its heading row above them
        y, ticks, labels, heading = [], [], [], []
        groups = list(frame["group"])
        for i, g in enumerate(groups):
            y.append(len(ticks))
            ticks.append(len(ticks))
            labels.append(frame["label"].iloc[i])
            if i + 1 == len(groups) or groups[i + 1] != g:
                heading.append(len(ticks))
                ticks.append(len(ticks))
                labels.append(f"target {g}")
        bars = ax.barh(y, frame["tg"], xerr=err, color=colors, capsize=3, height=0.6)
        ax.set_yticks(ticks, labels)
        for h in heading:
            ax.get_yticklabels()[h].set_fontweight("bold")
            if h + 1 < len(ticks):
                ax.axhline(h + 0.5, color="0.75", linewidth=0.8)
    if "effect" in frame:
        for bar, effect in zip(bars, frame["effect"]):
            if effect == "within_noise":
                bar.set_alpha(0.45)
                bar.set_hatch(WITHIN_NOISE_HATCH)
    ax.axvline(0, color="0.3", linewidth=0.8)
    ax.set_xlabel(xlabel or tg_axis_label())
    ax.set_title(title, fontsize=10)
    ax.spines["left"].set_visible(False)
    return fig


# Dense predictions: segmentation classes on one fixed categorical map (the same class has the
# same colour in every panel and every run), ignored pixels black; depth on one colour scale
# per image shared by its truth and prediction (invalid truth pixels black); normals as RGB of
# (n + 1) / 2.
SEGMENT_COLORS = [matplotlib.colormaps["tab20"](i) for i in range(20)]
DEPTH_CMAP = "viridis"
INVALID_COLOR = "black"


def _segment_cmap(classes: int) -> ListedColormap:
    colors = [SEGMENT_COLORS[i % len(SEGMENT_COLORS)] for i in range(max(classes, 1))]
    return ListedColormap(colors, "segments").with_extremes(bad=INVALID_COLOR)


def _image_array(image) -> np.ndarray:
    """A [C, H, W] uint8 image as imshow takes it (H × W grey, or H × W × 3)."""
    a = np.asarray(image)
    return a[0] if a.shape[0] == 1 else np.moveaxis(a[:3], 0, -1)


def _normal_rgb(normals) -> np.ndarray:
    n = np.asarray(normals, dtype=np.float32)
    return np.clip((np.moveaxis(n, 0, -1) + 1.0) / 2.0, 0.0, 1.0)


def dense_predictions_figure(blob: dict) -> Figure:
    """A few test images of a dense target (`predictions.pt` of a run): one row per image,
    the image first, then each dense task's ground truth and the model's prediction.
    Segmentation in a fixed categorical colour map (ignored pixels black), depth on one
    colour scale per image shared by truth and prediction (invalid pixels black), normals as
    RGB of (n + 1) / 2."""
    images = np.asarray(blob["image"])
    tasks = list(blob["tasks"].items())
    rows, cols = len(images), 1 + 2 * len(tasks)
    h, w = images.shape[-2:]
    panel = min(1.3, TSNE_WIDTH_IN / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel * cols, panel * h / w * rows + 0.7), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for i in range(rows):
        axes[i, 0].imshow(_image_array(images[i]), cmap="gray", vmin=0, vmax=255)
        for t, (name, task) in enumerate(tasks):
            truth, pred = np.asarray(task["truth"][i]), np.asarray(task["pred"][i])
            cells = (axes[i, 1 + 2 * t], axes[i, 2 + 2 * t])
            kind = task["kind"]
            if kind == "segmentation":
                cmap = _segment_cmap(int(task["classes"]))
                norm = Normalize(-0.5, cmap.N - 0.5)
                for ax, labels in zip(cells, (truth, pred)):
                    shown = np.ma.masked_less(labels.astype(np.int64), 0)
                    ax.imshow(shown, cmap=cmap, norm=norm, interpolation="nearest")
            elif kind == "depth":
                truth, pred = truth.astype(np.float32), pred.astype(np.float32)
                valid = truth > 0
                both = np.concatenate([truth[valid], pred.ravel()])
                norm = Normalize(float(both.min()), float(both.max()))
                cmap = matplotlib.colormaps[DEPTH_CMAP].with_extremes(bad=INVALID_COLOR)
                cells[0].imshow(np.ma.masked_array(truth, ~valid), cmap=cmap, norm=norm)
                cells[1].imshow(pred, cmap=cmap, norm=norm)
            else:  # normals
                for ax, n in zip(cells, (truth, pred)):
                    ax.imshow(_normal_rgb(n))
            if i == 0:
                cells[0].set_title(f"{name}\ntruth", fontsize=9)
                cells[1].set_title(f"{name}\nprediction", fontsize=9)
    axes[0, 0].set_title("\nimage", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # a closed, light frame: image axes have no units
            spine.set_visible(True)
            spine.set_color("0.75")
    split = blob.get("split", "test")
    fig.suptitle(
        f"Predictions of the final model on {rows} {split} images (target {blob['target']})",
        fontsize=10,
    )
    return fig


def _matrix_axes(ax, matrix: pd.DataFrame, cmap: str, norm, fmt: str):
    """A target × auxiliary heatmap with each cell's value written in it."""
    values = matrix.to_numpy(dtype=float)
    image = ax.imshow(values, cmap=cmap, norm=norm)
    names = list(matrix.index)
    for i in range(len(names)):
        for j in range(len(matrix.columns)):
            if np.isnan(values[i, j]):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.85"))
                continue
            ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(matrix.columns)), list(matrix.columns), rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("auxiliary task")
    ax.set_ylabel("target task")
    return image


AFFINITY_LABELS = {
    "lookahead": "lookahead affinity Z = 1 − L_t(θ − η g_a) / L_t(θ)",
    "lookahead-adam": "lookahead affinity with Adam's step η g_a / (√v̂ + ε)",
    "cosine": "gradient cosine cos(g_t, g_a)",
    "shift": "− feature shift between the tasks' inputs",
    "two-level": "z(target's mean cosine) + z(− shift within the target's row)",
}


def affinity_figure(table: pd.DataFrame, predictor: str) -> Figure:
    """One predictor's target × auxiliary matrix (mean over the measurements), from
    `affinity.csv`: diverging colours centred on 0 for the signed predictors."""
    from matplotlib.colors import Normalize, TwoSlopeNorm

    from ntlab.analysis.affinity import DERIVED, SIGNED, affinity_matrix

    matrix = affinity_matrix(table, predictor)
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.15 * n + 2.6, 0.95 * n + 1.6), layout="constrained")
    finite = matrix.to_numpy(dtype=float)
    finite = finite[~np.isnan(finite)]
    if predictor in SIGNED:
        limit = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-12)
        norm, cmap = TwoSlopeNorm(0.0, -limit, limit), "RdBu"
    else:
        low = float(finite.min()) if finite.size else -1.0
        high = max(float(finite.max()) if finite.size else 0.0, 0.0)
        norm, cmap = Normalize(min(low, -1e-12), high), "viridis"
    image = _matrix_axes(ax, matrix, cmap, norm, ".2g")
    steps = table["step"].nunique()
    how = "from the means over" if predictor in DERIVED else "mean over"
    ax.set_title(f"{predictor}: {how} {steps} measurements", fontsize=10)
    fig.colorbar(image, ax=ax, label=AFFINITY_LABELS.get(predictor, predictor), shrink=0.85)
    return fig


def affinity_vs_measured_figure(
    table: pd.DataFrame, measured: pd.DataFrame, predictor: str, tg_label: str | None = None
) -> Figure:
    """The measured TG map (seed mean) beside the predictor's map, and a scatter of every
    cell: predicted against measured, with the Spearman correlation."""
    from matplotlib.colors import TwoSlopeNorm

    from ntlab.analysis.affinity import _spearman, affinity_matrix

    pred = affinity_matrix(table, predictor)
    tg = measured.pivot_table(index="target", columns="aux", values="tg")
    tg = tg.reindex(index=pred.index, columns=pred.columns)
    n = len(pred)
    fig, axes = plt.subplots(1, 3, figsize=(3.4 * n + 4.5, 0.95 * n + 2.0), layout="constrained")
    limit = max(1.0, float(np.nanmax(np.abs(tg.to_numpy(dtype=float)))))
    image = _matrix_axes(axes[0], tg, "RdBu", TwoSlopeNorm(0.0, -limit, limit), "+.2f")
    axes[0].set_title("measured TG (mean over seeds)", fontsize=10)
    fig.colorbar(image, ax=axes[0], label=tg_label or tg_axis_label(), shrink=0.8)
    values = pred.to_numpy(dtype=float)
    spread = max(float(np.nanmax(np.abs(values))), 1e-12)
    image = _matrix_axes(axes[1], pred, "RdBu", TwoSlopeNorm(0.0, -spread, spread), ".2g")
    axes[1].set_title(f"predicted: {predictor}", fontsize=10)
    fig.colorbar(image, ax=axes[1], shrink=0.8)
    x = [pred.loc[t, a] for t, a in zip(measured["target"], measured["aux"])]
    rho = _spearman(x, measured["tg"])
    axes[2].scatter(x, measured["tg"], s=18, color="tab:blue")
    axes[2].axhline(0, color="0.6", linewidth=0.8)
    axes[2].set_xlabel(predictor)
    axes[2].set_ylabel(tg_label or tg_axis_label())
    rho_text = "n/a (a constant side)" if rho is None else f"{rho:+.2f}"
    axes[2].set_title(f"each cell: Spearman ρ = {rho_text}", fontsize=10)
    return fig


def affinity_scatter_figure(
    table: pd.DataFrame, measured: pd.DataFrame, tg_label: str | None = None
) -> Figure:
    """One panel per predictor: every cell's predicted value against its measured TG (seed
    mean, ± the seed std where there are several seeds), with the Spearman correlation."""
    from ntlab.analysis.affinity import _spearman, affinity_matrix, predictors_of

    predictors = predictors_of(table)
    fig, axes = plt.subplots(
        1, len(predictors), figsize=(3.6 * len(predictors) + 0.6, 3.4), layout="constrained",
        squeeze=False,
    )  # fmt: skip
    seeds = [c for c in measured.columns if c.startswith("tg_")]
    spread = measured[seeds].std(axis=1, ddof=1) if len(seeds) > 1 else None
    for ax, predictor in zip(axes[0], predictors):
        matrix = affinity_matrix(table, predictor)
        x = [matrix.loc[t, a] for t, a in zip(measured["target"], measured["aux"])]
        ax.errorbar(x, measured["tg"], yerr=spread, fmt="o", markersize=4, capsize=2,
                    color=PALETTE[0], ecolor="0.6", linewidth=0.8)  # fmt: skip
        ax.axhline(0, color="0.6", linewidth=0.8)
        rho = _spearman(x, measured["tg"])
        ax.set_title(f"{predictor}: ρ = {'n/a' if rho is None else f'{rho:+.2f}'}", fontsize=10)
        ax.set_xlabel(predictor)
    axes[0][0].set_ylabel(tg_label or tg_axis_label())
    return fig
