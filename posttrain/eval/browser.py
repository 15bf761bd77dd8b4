"""Check the demo's report in a real browser: ``check_in_browser`` loads the page in headless chromium,
checks that every image decoded and takes a screenshot."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import tempfile


class ReportCheckError(RuntimeError):
    pass


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", f"--user-data-dir={profile}"]
        try:
            return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise ReportCheckError(f"chromium did not finish within {timeout:.0f} s") from err


def check_in_browser(html_path: str, screenshot_path: str, *, expected_images: int | None = None,
                     min_colours: int = 200, width: int = 1280, timeout: float = 60.0) -> dict:
    """Load the report in headless chromium; check every image decoded; screenshot the whole page.

    ``expected_images`` defaults to the number of ``<img`` tags in the file. Raises ``ReportCheckError``.
    Returns ``{"images_loaded", "images_total", "page_height", "colours"}``.
    """
    from PIL import Image

    url = pathlib.Path(html_path).resolve().as_uri()
    if expected_images is None:
        expected_images = pathlib.Path(html_path).read_text(encoding="utf-8").count("<img ")
    dom = _chromium([f"--window-size={width},1000", "--dump-dom", url], timeout).stdout
    found = {k: re.search(rf'data-{k}="(\d+)"', dom) for k in ("images-loaded", "images-total", "page-height")}
    if not all(found.values()):
        raise ReportCheckError("the page did not finish loading in chromium (no data-images-loaded on <body>)")
    loaded, total, height = (int(m.group(1)) for m in found.values())
    if loaded != expected_images or total != expected_images:
        raise ReportCheckError(f"{loaded} of {total} images decoded in the browser; expected {expected_images}")
    if os.path.exists(screenshot_path):
        os.remove(screenshot_path)
    _chromium([f"--window-size={width},{min(max(height, 600), 16000)}",
               f"--screenshot={os.path.abspath(screenshot_path)}", url], timeout)
    if not os.path.exists(screenshot_path):
        raise ReportCheckError(f"chromium wrote no screenshot to {screenshot_path}")
    with Image.open(screenshot_path) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 24)
    if len(colours) < min_colours:
        raise ReportCheckError(f"the screenshot looks blank: {len(colours)} distinct colours (< {min_colours})")
    return {"images_loaded": loaded, "images_total": total, "page_height": height, "colours": len(colours)}
