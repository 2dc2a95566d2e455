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
