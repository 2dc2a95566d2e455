"""The documents cite only what is in the repository: every relative link of the README and
docs/ exists, no text names a Markdown file or folder that is not here, the paper is linked
and citable, and the LICENSE matches pyproject.toml."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "reports" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MARKDOWN_NAME = re.compile(r"(?<![\w/.-])([\w./-]*[\w-]\.md)\b")
PAPER = "https://arxiv.org/abs/2301.12618"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, flags=re.M)}


def test_there_is_a_formulas_page():
    assert (ROOT / "docs" / "formulas.md").is_file()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_exists(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name} links to {target}, which is not in the repository"
        assert ROOT in file.parents or file == ROOT, f"{doc.name} links outside: {target}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{doc.name} links to #{anchor}: no such heading"


def _texts():
    yield from DOCS
    yield from sorted((ROOT / "ntlab").rglob("*.py"))
    yield from sorted((ROOT / "ntlab" / "report" / "templates").iterdir())
    yield from sorted((ROOT / "benchmarks").glob("*.py"))


def test_no_text_cites_a_file_outside_the_repository():
    """PAPER.md, CALIBRATION.md, DESIGN.md or a `shared/` folder are not in the repository:
    neither the documents nor the code (docstrings, help, report captions) may cite them."""
    here = {p.name for p in ROOT.rglob("*.md") if ".git" not in p.parts}
    for path in _texts():
        text = path.read_text()
        for name in MARKDOWN_NAME.findall(text):
            assert Path(name).name in here, f"{path.relative_to(ROOT)} cites {name}"
        assert "shared/" not in text, f"{path.relative_to(ROOT)} cites a shared/ folder"


def test_the_readme_links_the_paper_and_gives_a_bibtex_entry():
    readme = (ROOT / "README.md").read_text()
    assert PAPER in readme and "ForkMerge: Mitigating Negative Transfer" in readme
    bibtex = re.search(r"```bibtex\n(@inproceedings\{jiang2023forkmerge,.*?)\n```", readme, re.S)
    assert bibtex, "no BibTeX entry"
    entry = bibtex.group(1)
    for field in ("title", "author", "booktitle", "year"):
        assert re.search(rf"^\s*{field}\s*=", entry, re.M), f"BibTeX entry has no {field}"
    assert entry.count("{") == entry.count("}")
    for author in ("Jiang, Junguang", "Chen, Baixu", "Pan, Junwei", "Wang, Ximei", "Long"):
        assert author in entry


def test_the_license_file_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in license_text
    author = project["authors"][0]["name"]
    assert re.search(rf"Copyright \(c\) \d{{4}} {re.escape(author)}", license_text)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Set up and run the test suite", 1)[1].split("```bash\n", 1)[1]
    command = block.split("\n", 1)[0]
    assert "pytest" in command
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert lines[-1] == command
