"""ForkMerge with `--merge-heads all` vs `shared` on digits (issue 14, item 3).

The two ways of merging heads, measured the way `pairwise --method forkmerge` and
`sweep --with-forkmerge` train ForkMerge (the same library calls, cached like them):
- pairwise: two branches (target alone; target + one auxiliary domain), every ordered pair of
  `--domains`;
- sweep: per-task branches (target alone + one branch per other domain) for each target.
Default preset, seeds 0, 1, 2. TG in test accuracy points against the STL run of the same
seed; mean ± seed std, and the paired difference shared − all.

    python benchmarks/merge_heads.py [--domains mnist,mnistm,syn] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

import pandas as pd
import torch

from ntlab.analysis.pairwise import Cell, cell_config
from ntlab.core.forkmerge import (
    ForkMergeOptions,
    cached_forkmerge,
    joint_branches,
    per_task_branches,
)
from ntlab.core.runner import TrainConfig, cached_run, stl_config
from ntlab.data import get_benchmark
from ntlab.metrics import transfer_gain
from ntlab.presets import PRESETS

MODES = ("all", "shared")


def base_config(target: str, aux: list[str]) -> TrainConfig:
    preset = PRESETS["default"]
    keys = ("steps", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "eval_every")
    return TrainConfig(target=target, aux=aux, method="ew", **{k: preset[k] for k in keys})


def tg_row(kind: str, target: str, aux: str, seed: int, mode: str, cfg, branches) -> dict:
    opts = ForkMergeOptions(merge_every=PRESETS["default"]["merge_every"], merge_heads=mode)
    results, _ = cached_forkmerge(cfg, branches, opts)
    stl, _ = cached_run(stl_config(cfg))
    return {
        "kind": kind, "target": target, "aux": aux, "seed": seed, "mode": mode,
        "tg": transfer_gain(results["test_score"], stl["test_score"]),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default="mnist,mnistm,syn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="merge_heads.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    domains = args.domains.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = get_benchmark("digits").tasks()
    rows, start = [], time.time()
    for seed in seeds:
        for target in domains:
            for aux in domains:
                if aux == target:
                    continue
                cfg = cell_config(base_config(target, [aux]), Cell(target, aux, "forkmerge", seed))
                for mode in MODES:
                    rows.append(tg_row("pairwise", target, aux, seed, mode, cfg,
                                       joint_branches(target, [aux])))  # fmt: skip
            others = [t for t in tasks if t != target]
            cfg = TrainConfig(**{**asdict(base_config(target, others)), "seed": seed})
            for mode in MODES:
                rows.append(tg_row("sweep", target, "all", seed, mode, cfg,
                                   per_task_branches(target, others)))  # fmt: skip
            print(f"seed {seed} {target}: {time.time() - start:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)
    wide = table.pivot_table(index=["kind", "target", "aux", "seed"], columns="mode", values="tg")
    wide["diff"] = wide["shared"] - wide["all"]
    cells = wide.groupby(["kind", "target", "aux"]).agg(["mean", "std"])
    print(cells.round(2).to_string())
    summary = {
        kind: {
            "mean_tg_all": float(part["all"].mean()),
            "mean_tg_shared": float(part["shared"].mean()),
            "mean_diff": float(part["diff"].mean()),
            "diff_std_over_runs": float(part["diff"].std(ddof=1)),
            "runs": int(len(part)),
        }
        for kind, part in wide.groupby(level="kind")
    }
    print(json.dumps(summary, indent=2))
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
