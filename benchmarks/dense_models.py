"""Forward + backward time of the fcn dense backbone (DenseCNN) at 32×32, batch 64.

For widths 8, 16 and 32, in one process, interleaved, after a warm-up:
- the backbone alone (loss: the mean square of its map);
- one training step's forward + backward with the three scenes heads (conv_head: segment,
  11 classes, cross-entropy; depth, 1 channel, L1; normal, 3 channels, L1), the ratio
  to width 16;
- at width 16, the same step with F.interpolate in the heads instead of the matmul upsample.
Minimum and median over --repeats rounds of --steps steps each (the minimum is the cost
with the least interference from other work on the machine).

    python benchmarks/dense_models.py [--threads 2] [--steps 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import ntlab.models.dense as dense

WIDTHS = (8, 16, 32)
SIZE = (32, 32)
TASKS = {"segment": 11, "depth": 1, "normal": 3}


def make_step(width: int, heads: bool, batch: int) -> Callable[[], None]:
    torch.manual_seed(0)
    backbone = dense.dense_cnn(image_size=SIZE, width=width)
    task_heads = {t: dense.conv_head(backbone.out_features, c, SIZE) for t, c in TASKS.items()}
    x = torch.rand(batch, 3, *SIZE)
    seg = torch.randint(0, TASKS["segment"], (batch, *SIZE))
    depth = torch.rand(batch, 1, *SIZE)
    normal = F.normalize(torch.randn(batch, 3, *SIZE), dim=1)

    def step() -> None:
        features = backbone(x)
        if heads:
            loss = (
                F.cross_entropy(task_heads["segment"](features), seg)
                + (task_heads["depth"](features) - depth).abs().mean()
                + (task_heads["normal"](features) - normal).abs().mean()
            )
        else:
            loss = features.square().mean()
        loss.backward()

    return step


def ms_per_step(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {(w, h): make_step(w, h, args.batch) for w in WIDTHS for h in (False, True)}
    matmul_upsample = dense.upsample_bilinear

    def interpolate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def f_interpolate_step() -> None:
        dense.upsample_bilinear = interpolate
        try:
            cases[16, True]()
        finally:
            dense.upsample_bilinear = matmul_upsample

    cases["interp", True] = f_interpolate_step
    times: dict[object, list[float]] = {key: [] for key in cases}
    for step in cases.values():  # warm-up
        ms_per_step(step, 3)
    for _ in range(args.repeats):
        for key, step in cases.items():
            times[key].append(ms_per_step(step, args.steps))
    print(
        f"{torch.get_num_threads()} threads, batch {args.batch}, {SIZE[0]}×{SIZE[1]}, "
        "forward + backward, ms per step (min / median)"
    )
    base = min(times[16, True])
    for width in WIDTHS:
        alone, full = times[width, False], times[width, True]
        print(
            f"width {width:>2}: backbone {min(alone):5.1f} / {statistics.median(alone):5.1f}"
            f"   + 3 heads {min(full):5.1f} / {statistics.median(full):5.1f}"
            f"   ({min(full) / base:.2f}× width 16)"
        )
    slow = times["interp", True]
    print(
        f"width 16 + 3 heads with F.interpolate: {min(slow):5.1f} / {statistics.median(slow):5.1f}"
        f"   ({min(slow) / base:.2f}× the matmul upsample)"
    )


if __name__ == "__main__":
    main()
