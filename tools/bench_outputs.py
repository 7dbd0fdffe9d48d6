"""Speed of the output tools on a tracked session: stats, report, video, export.

    python tools/bench_outputs.py [--animals 8] [--frames 3000] [--session DIR]

Without --session, simulates a 640x480 video, tracks it (not timed) and times each tool once on
it, in this process. Prints one line per tool: seconds and frames per second.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toxrt.config import build_config, load_config  # noqa: E402
from toxrt.outputs.export import export_session  # noqa: E402
from toxrt.outputs.report import write_report  # noqa: E402
from toxrt.outputs.results import open_session  # noqa: E402
from toxrt.tracking import run_tracking  # noqa: E402
from toxrt.outputs.stats import write_stats  # noqa: E402
from toxrt.sim.writer import write_simulation  # noqa: E402
from toxrt.outputs.video import VideoOptions, make_videos  # noqa: E402


def tracked_session(folder: Path, animals: int, frames: int) -> Path:
    sim = build_config({"sim": {"frames": frames, "seed": 1}}).sim
    paths = write_simulation(folder / "arena", sim, animals, progress=False)
    config = load_config(paths["params"], {"px_per_cm": 10.0, "streaming.publish_address": "",
                                           "streaming.marker_address": ""})
    return Path(run_tracking(config, progress=False)["session"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--animals", type=int, default=8)
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--session", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(args.session) if args.session else tracked_session(Path(tmp), args.animals, args.frames)
        results, config = open_session(session)
        n = results.n_frames
        print(f"session {session}: {n} frames, {results.n_animals} animals, {results.width}x{results.height}; "
              f"load {os.getloadavg()[0]:.2f}")
        jobs = {
            "stats": lambda: write_stats(results, config.stats, Path(tmp) / "stats"),
            "report": lambda: write_report(results, config, Path(tmp) / "report.html"),
            "video (vp8, full size)": lambda: make_videos(results, config, VideoOptions(), Path(tmp) / "v", False),
            "video (vp8, scale 0.5)": lambda: make_videos(results, config, VideoOptions(scale=0.5), Path(tmp) / "v2", False),
            "export (tidy + sleap)": lambda: export_session(results, ["tidy", "sleap"], Path(tmp) / "e"),
        }
        for name, job in jobs.items():
            t0 = time.perf_counter()
            job()
            seconds = time.perf_counter() - t0
            print(f"{name:24s} {seconds:7.2f} s  {n / seconds:8.0f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
