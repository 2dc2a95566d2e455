"""`ntlab --help`, `--version` and every `--help` import nothing heavy (no timing here:
benchmarks/startup.py measures the seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "pandas", "sklearn", "scipy", "matplotlib", "seaborn", "numpy")
PROBE = """
import json, sys
from typer.testing import CliRunner
from ntlab.cli import app
runner = CliRunner()
commands = [["--help"], ["--version"], ["methods"]] + [
    [*c, "--help"] for c in (["train"], ["gcs"], ["csd"], ["tsne"], ["sweep"], ["pairwise"],
    ["ternary"], ["compare"], ["report"], ["data", "prepare"], ["data", "list"],
    ["forkmerge", "train"], ["cache", "info"], ["cache", "verify"], ["cache", "clear"])
]
codes = {" ".join(c): runner.invoke(app, c).exit_code for c in commands}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in %r)
print(json.dumps({"codes": codes, "heavy": sorted({m.split(".")[0] for m in heavy})}))
"""


def test_help_and_version_import_no_heavy_library():
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,)], capture_output=True, text=True, cwd=ROOT,
        check=True,
    )  # fmt: skip
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(code == 0 for code in found["codes"].values()), found["codes"]
    assert found["heavy"] == [], f"--help imported {found['heavy']}"
