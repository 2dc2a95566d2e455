"""What each weighting method costs per training step, as a ratio to EW, in one process.

Every method trains the same model on the same batches (the target and its auxiliary tasks,
one loss term each); the adaptive ones also compute their weights or aggregate per-task
gradients. Reports steps/s and the wall time per step relative to EW (the best of a few
chunks, after a warm-up):

    python benchmarks/method_cost.py [--target optdigits] [--steps 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from ntlab.analysis.compare import method_names
from ntlab.core.runner import TrainConfig, build_model, build_rule, trained_tasks
from ntlab.core.state import TrainState
from ntlab.core.train import active_terms, attach_sources, train
from ntlab.data import get_benchmark
from ntlab.methods import METHODS


def steps_per_second(cfg: TrainConfig, data, steps: int, repeats: int) -> float:
    terms = active_terms(cfg.terms())
    state = TrainState.create(build_model(cfg, data, torch.device("cpu")), cfg.optim(), 10**6)
    attach_sources(state, terms, data, cfg.batch_size, cfg.seed)
    rule = build_rule(cfg, state, terms, data)
    train(state, terms, 5, rule)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        train(state, terms, steps, rule)
        best = min(best, time.perf_counter() - start)
    return steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="optdigits")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    bench = get_benchmark("digits")
    aux = [t for t in bench.tasks() if t != args.target]
    base = TrainConfig(target=args.target, method="ew", aux=aux)
    data = bench.load(trained_tasks(base), "cpu")
    print(f"cpu, {torch.get_num_threads()} threads, {len(aux)} auxiliary tasks, "
          f"{args.steps} steps × best of {args.repeats}")  # fmt: skip
    print(f"{'method':12s} {'kind':20s} {'steps/s':>8s} {'× EW time':>10s}")
    rates = {}
    for name in method_names():
        if name not in METHODS or name == "fixed":
            continue
        cfg = TrainConfig(**{**base.__dict__, "method": name})
        rates[name] = steps_per_second(cfg, data, args.steps, args.repeats)
    for name, rate in rates.items():
        kind = METHODS.get(name).kind
        print(f"{name:12s} {kind:20s} {rate:8.1f} {rates['ew'] / rate:10.2f}")


if __name__ == "__main__":
    main()
