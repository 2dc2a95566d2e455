"""Figures: each takes a tidy DataFrame and returns a matplotlib Figure (no I/O, no state)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


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
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
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
