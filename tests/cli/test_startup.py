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


def test_no_command_uses_a_name_that_is_imported_only_for_type_checking():
    """The command modules import heavy names inside their functions; a name imported at the
    top only under `if TYPE_CHECKING:` exists for annotations, and a function body that uses
    it fails at run time with a NameError (which ruff does not see)."""
    import ast

    problems = []
    for path in sorted((ROOT / "ntlab" / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        type_only = set()
        for node in tree.body:
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                for sub in node.body:
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        type_only.update((a.asname or a.name.split(".")[0]) for a in sub.names)
        bound_at_top = {
            a.asname or a.name.split(".")[0]
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for a in node.names
        }
        type_only -= bound_at_top
        functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)] + [
            m
            for c in tree.body
            if isinstance(c, ast.ClassDef)
            for m in c.body
            if isinstance(m, ast.FunctionDef)
        ]  # nested functions see their enclosing function's imports
        for fn in functions:
            local = {
                a.asname or a.name.split(".")[0]
                for sub in ast.walk(fn)
                if isinstance(sub, (ast.Import, ast.ImportFrom))
                for a in sub.names
            }
            annotations = {  # annotations are strings here (`from __future__ import annotations`)
                id(n)
                for sub in ast.walk(fn)
                for ann in (
                    [a.annotation for a in sub.args.args + sub.args.kwonlyargs] + [sub.returns]
                    if isinstance(sub, ast.FunctionDef)
                    else [sub.annotation]
                    if isinstance(sub, ast.AnnAssign)
                    else []
                )
                if ann is not None
                for n in ast.walk(ann)
            }
            used = {
                sub.id
                for stmt in fn.body
                for sub in ast.walk(stmt)
                if isinstance(sub, ast.Name)
                and isinstance(sub.ctx, ast.Load)
                and id(sub) not in annotations
            }
            for name in sorted((used & type_only) - local):
                problems.append(f"{path.name}:{fn.lineno} {fn.name} uses {name}")
    assert problems == [], problems
