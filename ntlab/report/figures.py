"""Figures: each takes a tidy DataFrame and returns a matplotlib Figure (no I/O, no state)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

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
    ax.set_xlabel("merge round")
    ax.set_ylabel("Λ* (share of the merged model)")
    ax.set_ylim(0, 1)
    ax.set_xticks(list(table.index))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, frameon=False)
    ax.set_title("ForkMerge: merge weights per round", fontsize=10)
    return fig


def _lam_colors(lams: list[float]) -> dict[float, str]:
    return {lam: PALETTE[i % len(PALETTE)] for i, lam in enumerate(sorted(lams))}


def gcs_figure(table: pd.DataFrame) -> Figure:
    """GCS vs one-step TG per λ > 0 (from `gcs.csv`), with a cubic fit per λ (paper Fig. 2):
    left in validation accuracy (the paper's TG), right in validation loss."""
    import numpy as np

    lams = sorted(lam for lam in table["lam"].unique() if lam > 0)
    colors = _lam_colors(lams)
    kind = table["aux_kind"].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), layout="constrained")
    panels = [
        ("tg", "TG of one step (val accuracy points)"),
        ("tg_loss", "TG of one step (val loss decrease)"),
    ]
    for ax, (column, ylabel) in zip(axes, panels):
        for lam in lams:
            group = table[table["lam"] == lam]
            ax.scatter(
                group["gcs"], group[column], s=14, alpha=0.55, color=colors[lam], label=f"λ={lam:g}"
            )
            if group["gcs"].nunique() >= 4:
                coef = np.polyfit(group["gcs"], group[column], 3)
                grid = np.linspace(group["gcs"].min(), group["gcs"].max(), 100)
                ax.plot(grid, np.polyval(coef, grid), color=colors[lam], linewidth=1.6)
        ax.axhline(0, color="0.4", linewidth=0.8, linestyle="--")
        ax.axvline(0, color="0.4", linewidth=0.8, linestyle="--")
        aux = "weight decay (½‖θ‖²)" if kind == "weight-decay" else "auxiliary tasks"
        ax.set_xlabel(f"gradient cosine similarity, target vs {aux}")
        ax.set_ylabel(ylabel)
    axes[0].legend(title="λ (cubic fit)", fontsize=8, title_fontsize=8, loc="best", frameon=False)
    fig.suptitle(
        "Gradient conflict vs transfer gain of one step (left of 0: conflicting; above 0: helps)",
        fontsize=10,
    )
    return fig


def csd_figure(table: pd.DataFrame) -> Figure:
    """CSD vs TG per λ, mean ± seed std (from `csd.csv`; paper Fig. 3b)."""
    grouped = table.groupby("lam")[["csd", "tg"]]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    std["tg"] = _tg_spread(table, "lam")  # one seed: TG's test-set SE
    colors = _lam_colors(list(mean.index))
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    ax.plot(mean["csd"], mean["tg"], color="0.7", linewidth=1, zorder=1)
    for lam, row in mean.iterrows():
        ax.errorbar(
            row["csd"],
            row["tg"],
            xerr=std.loc[lam, "csd"],
            yerr=std.loc[lam, "tg"],
            fmt="o",
            markersize=7,
            color=colors[lam],
            ecolor=colors[lam],
            elinewidth=1,
            alpha=0.9,
            capsize=3,
            zorder=2,
            label=f"λ={lam:g}",
        )
    ax.legend(fontsize=8, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.axhline(0, color="0.4", linewidth=0.8, linestyle="--")
    ax.set_xlabel("confidence score discrepancy on target test (1 − mean max-softmax)")
    ax.set_ylabel("TG vs λ = 0 (test accuracy points)")
    seeds = table["seed"].nunique()
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed, TG ± test-set SE"
    ax.set_title(f"Distribution shift vs transfer gain ({spread})", fontsize=10)
    ax.margins(x=0.15, y=0.15)
    return fig


MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">"]
SOURCE_COLORS = {"target-train": PALETTE[0], "aux-train": PALETTE[1], "target-test": PALETTE[2]}


def tsne_figure(table: pd.DataFrame) -> Figure:
    """One t-SNE panel per λ (from `tsne.csv`): source by colour, class by marker (Fig. 3a)."""
    lams = sorted(table["lam"].unique())
    labels = sorted(table["label"].unique())
    marker = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(labels)}
    fig, axes = plt.subplots(
        1, len(lams), figsize=(3.3 * len(lams), 3.9), layout="constrained", squeeze=False
    )
    for ax, lam in zip(axes[0], lams):
        panel = table[table["lam"] == lam]
        for source in ("target-test", "target-train", "aux-train"):
            part = panel[panel["source"] == source]
            for label, group in part.groupby("label"):
                ax.scatter(
                    group["x"],
                    group["y"],
                    s=9,
                    marker=marker[label],
                    color=SOURCE_COLORS[source],
                    alpha=0.35 if source == "target-test" else 0.7,
                    linewidths=0,
                )
        share = lam / (1 + lam)
        ax.set_title(f"λ={lam:g} (aux share {share:.0%})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # a closed, light frame: t-SNE axes have no units
            spine.set_visible(True)
            spine.set_color("0.75")
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", linestyle="", color=c, label=s) for s, c in SOURCE_COLORS.items()
    ]
    handles += [
        Line2D([], [], marker=marker[c], linestyle="", color="0.3", label=f"class {c}")
        for c in labels
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 7),
        fontsize=8,
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
    table: pd.DataFrame, forkmerge: pd.DataFrame | None = None, grid_search: float | None = None
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
    ax.set_xticks(range(len(lams)), [f"{lam:g}" for lam in lams])
    ax.set_xlabel("λ, weight of the mixed auxiliary loss (λ = 0: STL)")
    ax.set_ylabel("TG vs STL (test accuracy points)")
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


def pairwise_figure(table: pd.DataFrame, method: str, limit: float | None = None) -> Figure:
    """Heatmap of TG per (target row, auxiliary column), seed mean ± its noise in each cell
    (the seed std with several seeds, the paired test-set SE with one), diverging colours
    centred on 0 and symmetric to ±`limit` (default: the largest |TG|; pass one limit to
    compare methods), from `pairwise.csv`. Cells within noise are faded and hatched."""
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
    within = 0
    for i, t in enumerate(domains):
        for j, a in enumerate(domains):
            value = mean.loc[t, a]
            if pd.isna(value):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.85"))
                continue
            spread, effect = noise.get((t, a), (None, None))
            text = f"{value:+.2f}" + ("" if spread is None else f"\n±{spread:.2f}")
            faded = effect == "within_noise"
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
    negative = int((mean < 0).sum().sum())
    total = int(mean.notna().sum().sum())
    ax.set_title(
        f"TG of {label}: {negative} of {total} pairs negative, {within} within noise", fontsize=10
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
    fig.colorbar(image, ax=ax, label="TG vs STL (test accuracy points)", shrink=0.85)
    return fig


def ternary_figure(table: pd.DataFrame, labels: list[str]) -> Figure:
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
    )  # fmt: skip
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
    fig.colorbar(image, cax=cax, label="TG vs STL (test accuracy points)")
    fig.suptitle(
        "Merging three branches: TG over the simplex (★ chosen on validation)", fontsize=10
    )
    return fig


def training_figure(metrics: pd.DataFrame) -> Figure:
    """Training loss per task (and per branch, for ForkMerge) against step, from a
    `metrics.csv` table; the first task drawn is the target, in bold."""
    loss = metrics[(metrics["split"] == "train") & (metrics["metric"] == "loss")]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    for i, (task, group) in enumerate(loss.groupby("task", sort=False)):
        group = group.sort_values("step")
        ax.plot(
            group["step"],
            group["value"],
            color=PALETTE[i % len(PALETTE)],
            linewidth=2.2 if i == 0 else 1.3,
            label=task,
        )
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (cross-entropy, log scale)")
    ax.set_title("Training loss per task", fontsize=10)
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def search_figure(search: pd.DataFrame) -> Figure:
    """The merge-search landscape of every ForkMerge round (from `search.csv`): validation
    accuracy of each candidate Λ, the chosen one starred. With two branches the x axis is
    Λ₁ (the auxiliary branch's share); with more it is the order the search tried them."""
    weights = search["weights"].astype(str).str.split(";")
    two = bool(len(weights)) and weights.map(len).max() == 2
    x = weights.map(lambda w: float(w[1])) if two else search["candidate"]
    frame = search.assign(x=x)
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    for i, (rnd, group) in enumerate(frame.groupby("round")):
        group = group.sort_values("x")
        color = PALETTE[i % len(PALETTE)]
        step = int(group["step"].iloc[0])
        ax.plot(group["x"], group["val_acc"], "-o", color=color, markersize=3.5, linewidth=1.2,
                label=f"round {rnd} (step {step})")  # fmt: skip
        chosen = group[group["chosen"].astype(str) == "True"]
        ax.scatter(chosen["x"], chosen["val_acc"], marker="*", s=160, color=color,
                   edgecolors="black", linewidths=0.6, zorder=5)  # fmt: skip
    ax.set_xlabel("Λ₁, share of the auxiliary branch" if two else "candidate (search order)")
    ax.set_ylabel("validation accuracy of the merge (%)")
    ax.set_title("Merge search per round (★ chosen Λ*)", fontsize=10)
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def tg_bar_figure(
    frame: pd.DataFrame, title: str = "Transfer gain per run (below 0: negative transfer)"
) -> Figure:
    """TG per labelled row (columns `label`, `tg` and optionally `tg_err`, the ± of each TG:
    its seed std or, with one seed, its test-set SE; `tg_std` is read as `tg_err` too) as
    horizontal bars, sorted, gains in blue and losses in red, with that ± as error bars.
    With an `effect` column, bars within noise are drawn faded and hatched."""
    frame = frame.sort_values("tg")
    column = "tg_err" if "tg_err" in frame else "tg_std" if "tg_std" in frame else None
    err = pd.to_numeric(frame[column], errors="coerce").fillna(0.0) if column else None
    err = err if err is not None and (err > 0).any() else None
    colors = ["#2166AC" if v >= 0 else "#B2182B" for v in frame["tg"]]
    fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(frame) + 1.4), layout="constrained")
    bars = ax.barh(frame["label"], frame["tg"], xerr=err, color=colors, capsize=3, height=0.6)
    if "effect" in frame:
        for bar, effect in zip(bars, frame["effect"]):
            if effect == "within_noise":
                bar.set_alpha(0.45)
                bar.set_hatch(WITHIN_NOISE_HATCH)
    ax.axvline(0, color="0.3", linewidth=0.8)
    ax.set_xlabel("TG vs STL (test accuracy points)")
    ax.set_title(title, fontsize=10)
    ax.spines["left"].set_visible(False)
    return fig
