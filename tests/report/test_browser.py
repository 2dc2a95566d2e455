"""A report as a reader opens it: headless Chromium (Debian's `chromium`) loads the page.

Skipped, with the reason, only where Chromium or Playwright is not installed; `.ci/run`
installs Chromium so CI always runs it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ntlab.report.page import write_report
from tests.report.test_report import runs  # noqa: F401 - the module fixture of real runs

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)"
)
EXAMPLE = Path(__file__).resolve().parents[2] / "reports" / "digits-example.html"


def open_in_chromium(page_path: Path) -> dict:
    """Load a page offline; return its images' natural widths, every request, console
    errors and page errors, and whether it overflows a 1200 px window."""
    seen = {"requests": [], "errors": []}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1200, "height": 900}, offline=True)
        page = context.new_page()
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        seen["widths"] = page.eval_on_selector_all(
            "img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)"
        )
        seen["overflow"] = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
        seen["title"] = page.title()
        browser.close()
    return seen


def test_a_comparison_report_loads_offline_with_every_image(runs, tmp_path):  # noqa: F811
    out = write_report([runs / "ew", runs / "fm", runs / "failed"], tmp_path / "cmp.html")
    seen = open_in_chromium(out)
    assert len(seen["widths"]) == 5 and all(w > 0 for w in seen["widths"]), seen["widths"]
    assert seen["requests"] == [out.resolve().as_uri()], "the page fetched something"
    assert seen["errors"] == []
    assert not seen["overflow"], "the page is wider than the window"
    assert seen["title"] == "ntlab: 3 runs compared"


def test_an_svg_report_decodes_too(runs, tmp_path):  # noqa: F811
    out = write_report([runs / "fm"], tmp_path / "fm.html", fmt="svg")
    seen = open_in_chromium(out)
    assert len(seen["widths"]) == 3 and all(w > 0 for w in seen["widths"])
    assert seen["requests"] == [out.resolve().as_uri()] and seen["errors"] == []


@pytest.mark.skipif(not EXAMPLE.exists(), reason="no example report checked in")
def test_the_checked_in_example_report_loads():
    seen = open_in_chromium(EXAMPLE)
    assert seen["widths"] and all(w > 0 for w in seen["widths"])
    assert seen["requests"] == [EXAMPLE.as_uri()] and seen["errors"] == []
    assert not seen["overflow"]
