"""Training throughput of the default model on this machine, and where a step's time goes.

Reports, for STL and EW on the `digits` benchmark (target mnistm) and on the dense
`scenes` benchmark (target segment, with depth and normal; `ntlab data prepare scenes`
first), the steps/s of the real training loop
(`ntlab.core.train.train`) and of a loop that only does forward + backward + optimiser
step on batches drawn beforehand. The difference is the loop's overhead: batch sampling,
indexing, schedule, logging. The time to draw the batches alone is reported too. All are
measured in one process after a warm-up, as short interleaved chunks (minimum kept), since
wall-clock noise on a shared 2-core machine is larger than the effect being measured.

    python benchmarks/train_throughput.py [--steps 100] [--repeats 15] [--device cpu]
        [--benchmarks digits,scenes]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ntlab.core.runner import TrainConfig, build_model, resolve_device
from ntlab.core.state import TrainState
from ntlab.core.train import active_terms, attach_sources, term_losses, train
from ntlab.data import get_benchmark

TARGETS = {"digits": "mnistm", "scenes": "segment"}


def setup(
    method: str, device: torch.device, batch_size: int, benchmark: str = "digits"
) -> tuple[TrainState, list]:
    bench = get_benchmark(benchmark)
    target = TARGETS[benchmark]
    aux = [t for t in bench.tasks() if t != target]
    backbone = getattr(bench, "default_backbone", "cnn")
    cfg = TrainConfig(
        target=target, method=method, aux=aux, batch_size=batch_size, benchmark=benchmark,
        backbone=backbone,
    )  # fmt: skip
    terms = active_terms(cfg.terms())
    tasks = list(dict.fromkeys(t for term in terms for t in term.tasks))
    data = bench.load(tasks, device)
    state = TrainState.create(build_model(cfg, data, device), cfg.optim(), 10**6)
    attach_sources(state, terms, data, batch_size, seed=0)
    return state, terms


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_loop(state: TrainState, terms: list, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    train(state, terms, steps, log_every=50, on_log=lambda *_: None)
    sync(device)
    return time.perf_counter() - start


def time_compute(state: TrainState, terms: list, steps: int, device: torch.device) -> float:
    """Forward + backward + optimiser step only, on batches drawn before the clock starts."""
    sources = [state.sources[t.name] for t in terms]
    heads = [[state.model.head_index(task) for task in t.tasks] for t in terms]
    weights = torch.tensor([t.weight for t in terms], device=device)
    batches = [[src.next() for src in sources] for _ in range(steps)]
    sync(device)
    start = time.perf_counter()
    for step_batches in batches:
        loss = torch.stack(term_losses(state.model, step_batches, heads)[0]) @ weights
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
    sync(device)
    return time.perf_counter() - start


def time_draw(state: TrainState, terms: list, steps: int, device: torch.device) -> float:
    """Drawing the batches alone (sampling, indexing), as the loop does each step."""
    sources = [state.sources[t.name] for t in terms]
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        for src in sources:
            src.next()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps per timed chunk")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved chunks per loop")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--benchmarks", default="digits,scenes", help="comma-separated")
    args = parser.parse_args()
    device = resolve_device(args.device)
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    reports = {b: measure(b, device, args) for b in benchmarks}
    if args.json:
        print(json.dumps(reports, indent=2))
        return
    for name, report in reports.items():
        print(f"{name}: device {report['device']}, {report['threads']} threads, ", end="")
        print(f"chunks of {args.steps} steps, best of {args.repeats}")
        header = ("method", "terms", "loop steps/s", "compute steps/s", "overhead", "batch draw")
        print(f"{header[0]:8} " + " ".join(f"{h:>15}" for h in header[1:]))
        for method, r in report["methods"].items():
            cells = (r["terms"], r["loop_steps_per_s"], r["compute_only_steps_per_s"])
            shares = (f"{r['overhead_share']:.1%}", f"{r['batch_draw_share']:.1%}")
            print(f"{method:8} " + " ".join(f"{c:>15}" for c in (*cells, *shares)))
        print(f"EW / STL wall time per step: {report['ew_over_stl_time']}×")


def measure(benchmark: str, device: torch.device, args) -> dict:
    report = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "methods": {},
    }
    for method in ("stl", "ew"):
        state, terms = setup(method, device, args.batch_size, benchmark)
        time_loop(state, terms, 50, device)  # warm-up: first steps in a process are slow
        time_compute(state, terms, 50, device)
        loops, computes, draws = [], [], []
        for _ in range(args.repeats):  # short interleaved chunks; the minimum rejects noise
            loops.append(time_loop(state, terms, args.steps, device))
            computes.append(time_compute(state, terms, args.steps, device))
            draws.append(time_draw(state, terms, args.steps, device))
        loop, compute, draw = min(loops), min(computes), min(draws)
        report["methods"][method] = {
            "terms": len(terms),
            "loop_steps_per_s": round(args.steps / loop, 1),
            "compute_only_steps_per_s": round(args.steps / compute, 1),
            "overhead_share": round(max(0.0, 1 - compute / loop), 4),
            "batch_draw_share": round(draw / loop, 4),
        }
    m = report["methods"]
    report["ew_over_stl_time"] = round(
        m["stl"]["loop_steps_per_s"] / m["ew"]["loop_steps_per_s"], 2
    )
    return report


if __name__ == "__main__":
    main()
