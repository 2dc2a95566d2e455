"""What ForkMerge costs on this machine, measured in one process after a warm-up.

Reports the wall time of ForkMerge (B = 2 joint branches, T steps, the default grid
search) against
- B × STL for T steps (the issue's ratio; note the joint branch runs two loss terms per
  step, so it alone costs about two STL steps), and
- the same two branches trained without any merge: STL + fixed λ = 1 for T steps;
and the time ForkMerge spends outside its branches' training loops (forks, candidate
evaluations, merges, the final evaluation) as a share of that training: the search cost.

    python benchmarks/forkmerge_overhead.py [--target optdigits] [--steps 500] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch

import ntlab.core.forkmerge as fm_module
from ntlab.core.forkmerge import ForkMergeOptions, joint_branches, run_forkmerge
from ntlab.core.runner import TrainConfig, run_training
from ntlab.data import get_benchmark


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_branch_training() -> list[float]:
    """Wrap ForkMerge's calls to the training loop so the time spent in them is recorded."""
    spent: list[float] = []
    inner = fm_module.train

    def timed_train(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    fm_module.train = timed_train
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="optdigits")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--merge-every", type=int, default=125)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    aux = [t for t in get_benchmark("digits").tasks() if t != args.target]
    base = dict(target=args.target, aux=aux, steps=args.steps, eval_every=args.steps)
    stl = TrainConfig(method="stl", **base)
    joint = TrainConfig(method="fixed", lam=1.0, **base)
    opts = ForkMergeOptions(merge_every=args.merge_every)
    branches = joint_branches(args.target, aux)
    run_training(TrainConfig(**{**stl.__dict__, "steps": 50}))  # warm-up
    times: dict[str, list[float]] = {"stl": [], "joint": [], "forkmerge": [], "outside": []}
    spent = time_branch_training()
    for _ in range(args.repeats):  # interleaved, minimum kept
        times["stl"].append(timed(lambda: run_training(stl)))
        times["joint"].append(timed(lambda: run_training(joint)))
        spent.clear()
        times["forkmerge"].append(timed(lambda: run_forkmerge(stl, branches, opts)))
        times["outside"].append(times["forkmerge"][-1] - sum(spent))
    best = {k: min(v) for k, v in times.items()}
    rounds = -(-args.steps // args.merge_every)
    b = best
    print(
        f"{args.target}, T = {args.steps}, Δt = {args.merge_every}: {rounds} merges, grid 0.1 → ",
        end="",
    )
    print(f"{11 * rounds} candidates; {torch.get_num_threads()} threads; best of {args.repeats}")
    print(f"STL {b['stl']:.2f} s   joint λ=1 {b['joint']:.2f} s   ForkMerge {b['forkmerge']:.2f} s")
    print(f"ForkMerge / (2 × STL)          = {b['forkmerge'] / (2 * b['stl']):.2f}")
    print(f"ForkMerge / (STL + joint λ=1)  = {b['forkmerge'] / (b['stl'] + b['joint']):.2f}")
    inside = b["forkmerge"] - b["outside"]
    print(
        "ForkMerge outside its branch training (forks, searches, merges, final evaluation): ",
        end="",
    )
    print(f"{b['outside']:.2f} s = {b['outside'] / inside:.1%} of that training")


if __name__ == "__main__":
    main()
