"""Does `--merge-margin` help? ForkMerge TG with and without a margin, per target and seed.

Joint branches (target alone / target + all other domains mixed), default preset; TG is
test accuracy minus the STL run of the same budget and seed (from the cache or trained).

    python benchmarks/forkmerge_margin.py [--targets syn,permlo,mnist,mnistm] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import statistics

from ntlab.core.forkmerge import ForkMergeOptions, joint_branches, run_forkmerge
from ntlab.core.runner import TrainConfig, cached_run, stl_config
from ntlab.data import get_benchmark
from ntlab.presets import PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="syn,permlo,mnist,mnistm")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--margins", default="0,0.5")
    args = parser.parse_args()
    preset = dict(PRESETS["default"])
    merge_every = preset.pop("merge_every")
    tasks = get_benchmark("digits").tasks()
    margins = [float(m) for m in args.margins.split(",")]
    tg: dict[float, list[float]] = {m: [] for m in margins}
    for target in args.targets.split(","):
        aux = [t for t in tasks if t != target]
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = TrainConfig(target=target, method="ew", aux=aux, seed=seed, **preset)
            stl, _ = cached_run(stl_config(cfg))
            ew, _ = cached_run(cfg)
            cells = [f"{target:9} seed {seed}  EW {ew['test_score'] - stl['test_score']:+.2f}"]
            for margin in margins:
                opts = ForkMergeOptions(merge_every=merge_every, merge_margin=margin)
                res = run_forkmerge(cfg, joint_branches(target, aux), opts).results
                tg[margin].append(res["test_score"] - stl["test_score"])
                lams = " ".join(f"{r[1]:.1f}" for r in res["lambda_per_round"])
                cells.append(f"margin {margin:g}: {tg[margin][-1]:+.2f} (aux Λ {lams})")
            print("   ".join(cells), flush=True)
    for margin, values in tg.items():
        print(
            f"margin {margin:g}: mean TG {statistics.mean(values):+.2f}, worst {min(values):+.2f}"
        )


if __name__ == "__main__":
    main()
