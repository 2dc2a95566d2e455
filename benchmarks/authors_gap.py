"""Which of the authors' choices moves EW's transfer gain? One difference at a time.

EW (target + every other digits domain, each its own batch) against STL on one target,
resnet18 from scratch, Adam, per seed; TG = test accuracy of EW minus that of the STL run
with the same options. The baseline is ntlab's default (pooled BatchNorm batches, the last
iterate, the losses summed, 1 thread); each row changes one thing, the last row all of the
authors' choices together (per-term BatchNorm, mean, best-val). Every training keeps the
best-validation checkpoint *and* the last iterate's accuracies (results.json `last`), so one
training gives both the `last` and the `best-val` row. Trainings are cached in $NTLAB_HOME:
a second run prints the table at once.

Needs the digits data at the resolution asked for:

    ntlab data prepare --size 32 --force
    python benchmarks/authors_gap.py [--target syn] [--seeds 0,1,2] [--steps 200] [--rows 0,1]
"""

from __future__ import annotations

import argparse
import statistics
import time

from ntlab.core.runner import TrainConfig, cached_run, stl_config
from ntlab.data import get_benchmark

# (row, the options that differ from the baseline, which selection is read)
ROWS = [
    ("ntlab (pooled, sum, last, 1 thread)", {}, "last"),
    ("best-val checkpoint", {}, "best-val"),
    ("per-term BatchNorm", {"bn_batches": "per-term"}, "last"),
    ("mean of the losses", {"loss_reduction": "mean"}, "last"),
    ("2 threads", {"threads": 2}, "last"),
    ("authors (per-term, mean, best-val)", {"bn_batches": "per-term", "loss_reduction": "mean"},
     "best-val"),
]  # fmt: skip


def accuracy(results: dict, select: str) -> float:
    return results["test_score"] if select == "best-val" else results["last"]["test_score"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="syn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument(
        "--rows", default=",".join(str(i) for i in range(len(ROWS))),
        help="which rows to measure, by position (0 = the baseline)",
    )  # fmt: skip
    args = parser.parse_args()
    rows = [ROWS[int(i)] for i in args.rows.split(",")]
    bench = get_benchmark("digits")
    tasks = bench.tasks()
    size = bench.load([args.target], "cpu")[args.target].x("train").shape[-1]
    if size != args.image_size:
        raise SystemExit(
            f"error: the digits data is {size} px; run `ntlab data prepare --size "
            f"{args.image_size} --force` (or pass --image-size {size})"
        )
    aux = [t for t in tasks if t != args.target]
    seeds = [int(s) for s in args.seeds.split(",")]
    base = dict(
        target=args.target, aux=aux, method="ew", backbone="resnet18", steps=args.steps,
        batch_size=args.batch_size, lr=1e-3, optimizer="adam", schedule="cosine",
        eval_every=args.eval_every, select="best-val", threads=1, device="cpu",
    )  # fmt: skip
    tg: dict[str, list[float]] = {row: [] for row, _, _ in rows}
    stl_acc: dict[str, list[float]] = {row: [] for row, _, _ in rows}
    ew_acc: dict[str, list[float]] = {row: [] for row, _, _ in rows}
    for seed in seeds:
        for row, change, select in rows:
            cfg = TrainConfig(**{**base, "seed": seed, **change})
            start = time.time()
            stl, stl_source = cached_run(stl_config(cfg))
            ew, ew_source = cached_run(cfg)
            s, e = accuracy(stl, select), accuracy(ew, select)
            tg[row].append(e - s)
            stl_acc[row].append(s)
            ew_acc[row].append(e)
            print(
                f"seed {seed}  {row:38} STL {s:6.2f}  EW {e:6.2f}  TG {e - s:+6.2f}  "
                f"(EW step {ew.get('selected_step')} if best-val; {stl_source}/{ew_source}, "
                f"{time.time() - start:.0f} s)",
                flush=True,
            )
    print()
    print(
        f"EW vs STL on {args.target}, resnet18 from scratch at {size} px, Adam 1e-3 cosine, "
        f"{args.steps} steps, batch {args.batch_size} per term, seeds {args.seeds}"
    )
    print(f"| {'variant':38} | STL test | EW test | TG mean ± std |")
    print(f"|{'-' * 40}|---------:|--------:|--------------:|")
    for row, _, _ in rows:
        values = tg[row]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"| {row:38} | {statistics.mean(stl_acc[row]):8.2f} | "
            f"{statistics.mean(ew_acc[row]):7.2f} | {statistics.mean(values):+6.2f} ± {std:4.2f} |"
        )


if __name__ == "__main__":
    main()
