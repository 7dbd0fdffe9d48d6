"""Screenshot of a session's HTML report in headless Chromium (the README's picture).

    python tools/report_screenshot.py SESSION docs/report_screenshot.png [--width 1280 --height 1000]

Writes the report (SESSION/report.html) if it is missing, then captures the top of the page
(--full for the whole page).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.headless_chromium import Chromium  # noqa: E402
from toxrt.outputs.report import REPORT_NAME, write_report  # noqa: E402
from toxrt.outputs.results import open_session  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("session")
    parser.add_argument("png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--full", action="store_true", help="the whole page, not only its top")
    args = parser.parse_args()
    report = Path(args.session) / REPORT_NAME
    if not report.exists():
        write_report(*open_session(args.session))
    with Chromium() as browser:
        browser.open(report.resolve().as_uri(), args.width, args.height)
        browser.screenshot(args.png, full_page=args.full)
    print(f"written: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
