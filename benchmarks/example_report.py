"""Regenerate the checked-in example report, `reports/digits-example.html`.

Runs every ntlab command once on the embedded digits benchmark with the quick preset (as a
user would, through the `ntlab` command line; trainings already in the cache are reused),
with two seeds wherever a command compares transfer gains over seeds (`sweep`, `csd`,
`pairwise` over three domains, `compare` over a dozen methods; the one-seed commands show
the paired test-set SE; `affinity` over the pairwise's three domains, scored against it),
then renders all
the run directories as one page with paths relative to it:

    python benchmarks/example_report.py [--runs runs/example] [--out reports/digits-example.html]

The data must be prepared first (`ntlab data prepare digits`). A test checks that the page
was rendered by the report code as it is now: run this again after changing the views, the
figures or the template.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

TARGET = "optdigits"
SEEDS = ["--seeds", "0,1"]
COMPARED = "stl,ew,uw,rlw,pcgrad,mgda,gcs,ol-aux,auto-lambda,post-train,grid-search,forkmerge"
COMMANDS: list[tuple[str, list[str]]] = [
    ("train", ["train", "--method", "ew", "--target", "mnistm", "--aux", "mnist"]),
    ("forkmerge", ["forkmerge", "train", "--target", "mnistm", "--aux", "mnist"]),
    ("gcs", ["gcs", "--target", TARGET]),
    ("csd", ["csd", "--target", TARGET, *SEEDS]),
    ("tsne", ["tsne", "--target", TARGET]),
    ("sweep", ["sweep", "--target", TARGET, "--with-forkmerge", *SEEDS]),
    ("pairwise", ["pairwise", "--domains", "optdigits,mnist,syn", "--method", "ew,forkmerge",
                  *SEEDS]),
    ("affinity", ["affinity", "--tasks", "optdigits,mnist,syn", "--against", "{runs}/pairwise"]),
    ("ternary", ["ternary", "--target", TARGET, "--aux", "mnist,syn"]),
    # one method or two of each kind (`ntlab methods`), the procedures, and ForkMerge
    ("compare", ["compare", "--target", TARGET, "--methods", COMPARED, *SEEDS]),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/example"))
    parser.add_argument("--out", type=Path, default=Path("reports/digits-example.html"))
    args = parser.parse_args()
    ntlab = [sys.executable, "-m", "ntlab"]
    dirs = []
    total = time.perf_counter()
    for name, command in COMMANDS:
        out = args.runs / name
        start = time.perf_counter()
        command = [part.format(runs=args.runs) for part in command]
        subprocess.run(
            [*ntlab, *command, "--preset", "quick", "--out", str(out), "--overwrite", "-q"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"{name:10s} {time.perf_counter() - start:6.1f} s  → {out}")
        dirs.append(str(out))
    print(f"all commands: {time.perf_counter() - total:.0f} s")
    title = (
        "ntlab on the embedded digits benchmark (quick preset): every command, "
        "2 seeds where seeds are compared"
    )
    subprocess.run([*ntlab, "report", *dirs, "--out", str(args.out), "--title", title], check=True)


if __name__ == "__main__":
    main()
