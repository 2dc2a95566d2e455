"""Many trainings at once, measured: `--jobs 1` against `--jobs 2` (and Ray), one run.

(a) `ntlab pairwise --domains optdigits,mnist,syn --method ew,forkmerge --preset quick`
    with `--jobs 1` at its default threads (all cores) and with `--jobs 2` at its default
    threads (cores // 2 each), and optionally `--executor ray`; each configuration on a fresh
    cache (its own NTLAB_HOME with the digits data copied in), so every training is trained.
(b) ForkMerge's branches across processes under torchrun: `benchmarks/torchrun_forkmerge.py`
    (run by `--torchrun` here when that script is present).

    python benchmarks/parallel.py [--ray] [--torchrun] [--data-home ~/.cache/ntlab]

Prints each wall time and the ratio to `--jobs 1`. The data must be prepared first
(`ntlab data prepare digits`). Nothing here is a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIRWISE = ["pairwise", "--domains", "optdigits,mnist,syn", "--method", "ew,forkmerge",
            "--preset", "quick", "--quiet"]  # fmt: skip


def timed(args: list[str], data_home: Path, scratch: Path, name: str) -> float:
    home = scratch / name
    shutil.copytree(data_home / "datasets", home / "datasets")
    env = {**os.environ, "NTLAB_HOME": str(home)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ntlab", *args, "--out", str(scratch / f"{name}-run")],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray", action="store_true", help="also time --executor ray")
    parser.add_argument("--torchrun", action="store_true", help="also run (b)")
    parser.add_argument(
        "--data-home",
        type=Path,
        default=Path(os.environ.get("NTLAB_HOME") or Path.home() / ".cache" / "ntlab"),
    )
    args = parser.parse_args()
    if not (args.data_home / "datasets" / "digits").is_dir():
        sys.exit(f"no digits data under {args.data_home}; run `ntlab data prepare digits`")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    runs = [("--jobs 1", ["--jobs", "1"]), ("--jobs 2", ["--jobs", "2"])]
    if args.ray:
        runs.append(("--executor ray", ["--executor", "ray"]))
    print(f"(a) {' '.join(PAIRWISE)} on {cores} cores, each on a fresh cache")
    with tempfile.TemporaryDirectory(prefix="ntlab-parallel-") as scratch:
        times = {}
        for label, extra in runs:
            name = label.strip("-").replace(" ", "-")
            times[label] = timed([*PAIRWISE, *extra], args.data_home, Path(scratch), name)
            ratio = times[label] / times["--jobs 1"]
            print(f"  {label:16s} {times[label]:7.1f} s   {ratio:.2f} × --jobs 1", flush=True)
    if args.torchrun:
        script = Path(__file__).with_name("torchrun_forkmerge.py")
        if not script.is_file():
            sys.exit("(b) needs benchmarks/torchrun_forkmerge.py")
        print("(b) ForkMerge's branches under torchrun")
        subprocess.run([sys.executable, str(script)], check=True)


if __name__ == "__main__":
    main()
