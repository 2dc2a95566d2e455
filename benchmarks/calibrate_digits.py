"""Does the embedded `digits` benchmark show the paper's three regimes? (README: calibration)

For each target and each λ, trains fixed-λ joint training (PAPER.md Eq. 1; the other four
domains mixed into one auxiliary task) and STL with the same budget and seed, and prints
TG(λ) = test accuracy − STL test accuracy as mean ± std over seeds, then the regime by
PAPER.md Defs. 3.2/3.3. Uses the prepared data in NTLAB_HOME and the STL cache.

    python benchmarks/calibrate_digits.py [--targets mnist,mnistm,permlo] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ntlab.core.runner import TrainConfig, run_training, stl_baseline
from ntlab.data import get_benchmark
from ntlab.presets import PRESETS


def regime(tg_by_lam: dict[float, float]) -> str:
    gains = [tg for lam, tg in tg_by_lam.items() if lam > 0]
    if all(g > 0 for g in gains):
        return "positive"
    if any(g > 0 for g in gains):
        return "weak_negative"
    return "strong_negative"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="mnist,mnistm,permlo")
    parser.add_argument("--lams", default="0.0625,0.25,1,2")
    parser.add_argument("--method", default="fixed", choices=["fixed", "ew"], help="ew: λ=1 only")
    parser.add_argument("--aux", default="all", help="auxiliary tasks (comma list) or all")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--schedule", default=None, help="override the learning-rate schedule")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", default=None, help="write all rows as JSON here")
    args = parser.parse_args()
    tasks = get_benchmark("digits").tasks()
    lams = [1.0] if args.method == "ew" else [float(x) for x in args.lams.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    preset = dict(PRESETS[args.preset])
    if args.schedule:
        preset["schedule"] = args.schedule
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    start = time.time()
    for target in args.targets.split(","):
        aux = [t for t in tasks if t != target] if args.aux == "all" else args.aux.split(",")
        tg: dict[float, list[float]] = {lam: [] for lam in lams}
        stl_accs = []
        for seed in seeds:
            base = TrainConfig(target=target, method=args.method, aux=aux, seed=seed, **preset)
            stl, _ = stl_baseline(base)
            stl_accs.append(stl["test_acc"])
            for lam in lams:
                res = run_training(TrainConfig(**{**base.__dict__, "lam": lam})).results
                tg[lam].append(res["test_acc"] - stl["test_acc"])
                rows.append(
                    {
                        "target": target,
                        "lam": lam,
                        "seed": seed,
                        "test_acc": res["test_acc"],
                        "stl_test_acc": stl["test_acc"],
                        "tg": tg[lam][-1],
                    }
                )
        means = {lam: statistics.mean(v) for lam, v in tg.items()}
        cells = "  ".join(
            f"λ={lam:g}: {means[lam]:+.2f}±{statistics.stdev(v) if len(v) > 1 else 0:.2f}"
            for lam, v in tg.items()
        )
        print(
            f"{target:9} STL {statistics.mean(stl_accs):.2f}  {cells}  → {regime(means)}",
            flush=True,
        )
    print(f"({time.time() - start:.0f} s)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
