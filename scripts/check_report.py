"""Check that a ``posttrain demo`` report renders in headless chromium, and screenshot it.

    python scripts/check_report.py REPORT.html --screenshot OUT.png

Exits non-zero with a message if chromium is missing, an image did not decode, or the
screenshot is blank. The logic is ``posttrain.eval.browser.check_in_browser``.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from posttrain.eval.browser import ReportCheckError, check_in_browser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", help="the report.html to check")
    parser.add_argument("--screenshot", required=True, help="where to write the PNG screenshot")
    parser.add_argument("--images", type=int, default=None, help="expected image count (default: <img> tags)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per chromium run")
    args = parser.parse_args(argv)
    if shutil.which("chromium") is None:
        print("check_report: chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    try:
        info = check_in_browser(args.html, args.screenshot, expected_images=args.images, timeout=args.timeout)
    except (ReportCheckError, OSError) as err:
        print(f"check_report: FAILED: {err}", file=sys.stderr)
        return 1
    print(f"check_report: ok: {info['images_loaded']}/{info['images_total']} images decoded, page "
          f"{info['page_height']} px high, screenshot {args.screenshot} has {info['colours']} colours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
