"""Regenerate the checked-in example report, `reports/digits-example.html`.

Runs every ntlab command once on the embedded digits benchmark with the quick preset (as a
user would, through the `ntlab` command line; trainings already in the cache are reused),
then renders all the run directories as one page:

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
COMMANDS: list[tuple[str, list[str]]] = [
    ("train", ["train", "--method", "ew", "--target", "mnistm", "--aux", "mnist"]),
    ("forkmerge", ["forkmerge", "train", "--target", "mnistm", "--aux", "mnist"]),
    ("gcs", ["gcs", "--target", TARGET]),
    ("csd", ["csd", "--target", TARGET]),
    ("tsne", ["tsne", "--target", TARGET]),
    ("sweep", ["sweep", "--target", TARGET, "--with-forkmerge"]),
    ("pairwise", ["pairwise", "--method", "ew,forkmerge"]),
    ("ternary", ["ternary", "--target", TARGET, "--aux", "mnist,syn"]),
    ("compare", ["compare", "--target", TARGET, "--methods", "all"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/example"))
    parser.add_argument("--out", type=Path, default=Path("reports/digits-example.html"))
    args = parser.parse_args()
    ntlab = [sys.executable, "-m", "ntlab"]
    dirs = []
    for name, command in COMMANDS:
        out = args.runs / name
        start = time.perf_counter()
        subprocess.run(
            [*ntlab, *command, "--preset", "quick", "--out", str(out), "--overwrite", "-q"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"{name:10s} {time.perf_counter() - start:6.1f} s  → {out}")
        dirs.append(str(out))
    title = "ntlab on the embedded digits benchmark (quick preset): every command"
    subprocess.run([*ntlab, "report", *dirs, "--out", str(args.out), "--title", title], check=True)


if __name__ == "__main__":
    main()
