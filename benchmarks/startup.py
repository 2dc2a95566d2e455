"""Start-up time of the command line: `ntlab --help`, `--version` and every `--help`.

Each command runs in a fresh interpreter, `--repeat` times; the table shows the median wall
time. With `--against DIR` (another checkout of ntlab, e.g. a `git worktree` of an older
commit) both trees run side by side, interleaved, and the ratio is printed, so the numbers
compare under the same machine load:

    python benchmarks/startup.py [--repeat 5] [--against /path/to/old/checkout]

For reference it also times `python -c "import torch"`: what a command that trains pays
once, and what no `--help` should pay.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [
    ["--help"], ["--version"], ["train", "--help"], ["forkmerge", "train", "--help"],
    ["pairwise", "--help"], ["sweep", "--help"], ["compare", "--help"], ["gcs", "--help"],
    ["csd", "--help"], ["tsne", "--help"], ["ternary", "--help"], ["report", "--help"],
    ["data", "prepare", "--help"], ["cache", "info", "--help"], ["methods"],
]  # fmt: skip


def once(tree: Path, args: list[str], required: bool = True) -> float | None:
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "100"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ntlab", *args], env=env, capture_output=True, cwd=tree
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        if not required:  # e.g. a command the older checkout does not have
            return None
        raise SystemExit(f"`ntlab {' '.join(args)}` failed in {tree}: {done.stderr[-500:]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another ntlab checkout to compare with")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees = [here] + ([args.against.resolve()] if args.against else [])
    torch_times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        torch_times.append(time.perf_counter() - start)
    header = f"{'command':28} {'this tree':>10}"
    if args.against:
        header += f" {'--against':>10} {'ratio':>7}"
    print(header)
    worst = 0.0
    for command in COMMANDS:
        times: dict[Path, list[float]] = {tree: [] for tree in trees}
        for _ in range(args.repeat):
            for tree in trees:  # interleaved: both see the same load
                times[tree].append(once(tree, command, required=tree == here))
        medians = [
            None if None in times[tree] else statistics.median(times[tree]) for tree in trees
        ]
        worst = max(worst, medians[0])
        line = f"{'ntlab ' + ' '.join(command):28} {medians[0]:9.2f}s"
        if args.against and medians[1] is None:
            line += f" {'(absent)':>10}"
        elif args.against:
            line += f" {medians[1]:9.2f}s {medians[1] / medians[0]:6.1f}×"
        print(line, flush=True)
    print(
        f"\nslowest in this tree: {worst:.2f} s; `import torch` alone: "
        f"{statistics.median(torch_times):.2f} s (median of {args.repeat}); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
