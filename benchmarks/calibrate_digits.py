"""Does the embedded `digits` benchmark show the paper's three regimes? (README: calibration)

For each target, the sweep of `ntlab sweep` (fixed-λ joint training, the paper's Eq. 1, the
other domains mixed into one auxiliary task; STL and every training cached) over seeds,
printed as TG mean ± std per λ with the regime, and which λ help or hurt by more than twice
their seed std (the regime's rule). Point NTLAB_HOME at a folder prepared with other domain
sizes to compare calibrations without touching your main cache.

    python benchmarks/calibrate_digits.py [--targets mnist,permlo] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import time

import torch

from ntlab.analysis.sweep import lambda_grid_table, sweep_summary
from ntlab.core.runner import TrainConfig
from ntlab.data import get_benchmark
from ntlab.presets import PRESETS
from ntlab.runs import write_json

TRAIN_KEYS = ("steps", "batch_size", "lr", "optimizer", "weight_decay", "schedule")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="mnist,mnistm,permlo")
    parser.add_argument("--lams", default="0,0.0625,0.125,0.25,0.5,1,2")
    parser.add_argument("--aux", default="all", help="auxiliary tasks (comma list) or all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", default=None, help="write every target's summary as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = get_benchmark("digits").tasks()
    lams = [float(x) for x in args.lams.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    preset = {k: v for k, v in PRESETS[args.preset].items() if k in TRAIN_KEYS}
    summaries = {}
    start = time.time()
    for target in args.targets.split(","):
        aux = [t for t in tasks if t != target] if args.aux == "all" else args.aux.split(",")
        base = TrainConfig(target=target, aux=aux, device="cpu", **preset)
        summary = sweep_summary(lambda_grid_table(base, lams, seeds))
        summaries[target] = summary
        cells = "  ".join(
            f"λ={lam}: {r['tg_mean']:+.2f}±{r['tg_std']:.2f}"
            for lam, r in summary["per_lam"].items()
            if lam != "0"
        )
        stl = summary["per_lam"]["0"]["test_score_mean"]
        effects = summary["effect_per_lam"]
        helps = [lam for lam, e in effects.items() if e == "helps"]
        hurts = [lam for lam, e in effects.items() if e == "hurts"]
        print(
            f"{target:9} STL {stl:.2f}  {cells}  → {summary['regime']}  "
            f"({summary['regime_basis']}: helps {helps}, hurts {hurts})",
            flush=True,
        )
    print(f"({time.time() - start:.0f} s)")
    if args.out:
        write_json(args.out, summaries)


if __name__ == "__main__":
    main()
