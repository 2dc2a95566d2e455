"""ForkMerge's branches in one process vs one process per branch under torchrun.

`ntlab forkmerge train --branches per-task` with the target and two auxiliary tasks
(3 branches), `--preset quick`, `--threads 1`, no baselines, each run on a fresh cache
(a new NTLAB_HOME that links the datasets of yours). Prints the wall time of each (the
whole command, start-up included), their ratio, and where rank 0's time went: training
its branches, the exchange (all-gather of the round's reports, the branches' broadcast,
the checkpoint's gather and barrier) and the merge search (with the merge itself).

    python benchmarks/torchrun_forkmerge.py [--target optdigits] [--aux mnist,syn] [--steps N]

The two runs' results are checked to be equal (merges.csv, search.csv, results.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TREE = Path(__file__).resolve().parents[1]


def worker(args: list[str]) -> None:
    """The CLI, with run_forkmerge's timings written to $TIMINGS_FILE.<rank>.json."""
    import ntlab.core.forkmerge as fm
    from ntlab.cli import main

    inner = fm.run_forkmerge

    def timed(*a, **k):
        out = inner(*a, **k)
        rank = os.environ.get("RANK", "0")
        Path(f"{os.environ['TIMINGS_FILE']}.{rank}.json").write_text(json.dumps(out.timings))
        return out

    fm.run_forkmerge = timed
    sys.argv = ["ntlab", *args]
    main()


def run(cmd: list[str], home: Path, timings: Path) -> float:
    env = {**os.environ, "NTLAB_HOME": str(home), "PYTHONPATH": str(TREE)}
    env |= {"TIMINGS_FILE": str(timings), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:6])} … failed:\n{proc.stderr[-3000:]}")
    return wall


def fresh_home(root: Path, name: str) -> Path:
    from ntlab.paths import datasets_dir

    home = root / name
    home.mkdir()
    (home / "datasets").symlink_to(datasets_dir().resolve())
    return home


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:  # a process of a run: the CLI's own arguments follow
        worker(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="optdigits")
    parser.add_argument("--aux", default="mnist,syn")
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's (300)")
    parser.add_argument("--processes", type=int, default=None, help="default: one per branch")
    args = parser.parse_args()
    sys.path.insert(0, str(TREE))
    options = ["forkmerge", "train", "--target", args.target, "--aux", args.aux]
    options += ["--branches", "per-task", "--preset", "quick", "--threads", "1"]
    options += ["--no-baselines", "--quiet"] + (["--steps", str(args.steps)] if args.steps else [])
    me = [str(Path(__file__).resolve()), "--worker"]
    branches = 1 + len(args.aux.split(","))
    procs = args.processes or branches
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        walls, timings = {}, {}
        for name, launch in (
            ("1 process", [sys.executable]),
            (
                f"{procs} processes",
                [sys.executable, "-m", "torch.distributed.run", "--standalone"]
                + ["--nproc-per-node", str(procs)],
            ),
        ):
            out = root / name.replace(" ", "-")
            stem = root / f"timings-{name.replace(' ', '-')}"
            walls[name] = run(
                [*launch, *me, *options, "--out", str(out)], fresh_home(root, out.name), stem
            )
            timings[name] = [
                json.loads(Path(f"{stem}.{r}.json").read_text())
                for r in range(procs if "processes" in name else 1)
            ]
        one, many = (root / n.replace(" ", "-") for n in walls)
        for table in ("merges.csv", "search.csv"):
            assert (one / table).read_bytes() == (many / table).read_bytes(), table
        drop = ("duration_s",)
        a, b = (json.loads((p / "results.json").read_text()) for p in (one, many))
        assert {k: v for k, v in a.items() if k not in drop} == {
            k: v for k, v in b.items() if k not in drop
        }
    (n1, w1), (n2, w2) = walls.items()
    steps = a["steps"]
    print(
        f"ForkMerge on {args.target} with {args.aux} ({branches} branches, per-task), "
        f"{steps} steps, {a['rounds']} merges, --threads 1, {os.cpu_count()} CPU cores:"
    )
    print(
        f"  {n1}: {w1:.1f} s wall; {n2} (torchrun): {w2:.1f} s wall, "
        f"{w2 / w1:.2f} × the one-process wall time"
    )
    for name, per_rank in timings.items():
        for r, t in enumerate(per_rank):
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in t.items())
            print(f"  {name}, rank {r}: {parts}")
    print("  results equal: merges.csv, search.csv and results.json (duration aside)")


if __name__ == "__main__":
    main()
