"""Checks of a report page that any test can apply: self-contained, every figure decodes and
has a caption, and the given texts are on the page."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import matplotlib.image as mpimg

IMG = re.compile(r'<img src="data:image/(png|svg\+xml);base64,([A-Za-z0-9+/=]+)"')


def check_report(path: Path, figures: int | None = None, texts: tuple[str, ...] = ()) -> str:
    page = Path(path).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # Self-contained: nothing fetched, no external stylesheet, script or font.
    assert not re.search(r'(src|href)="(https?:|//)', page)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    images = IMG.findall(page)
    assert page.count("<img") == len(images), "an image is not inlined as a data URI"
    assert page.count("<figcaption>") == page.count("<figure>"), "a figure has no caption"
    if figures is not None:
        assert len(images) == figures, f"{len(images)} figures, expected {figures}"
    for kind, data in images:
        raw = base64.b64decode(data)
        if kind == "png":
            image = mpimg.imread(io.BytesIO(raw), format="png")
            assert image.shape[0] > 100 and image.shape[1] > 100
            assert image[..., :3].std() > 0.01  # not a blank canvas
        else:
            assert raw.lstrip().startswith(b"<?xml") and b"<svg" in raw
    for text in texts:
        assert text in page, f"{text!r} missing from {path}"
    return page
