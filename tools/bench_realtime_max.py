"""The highest real-time rate at which the live engine drops no frame, at 720p and 1080p.

Each trial replays the same pre-rendered frames of a simulated arena (20 animals) in real time at
one rate through the session loop, with a subscriber process receiving every ``pos`` message (the
harness of ``bench_latency.py``). A rate passes when the source dropped no frame in one of
``--attempts`` trials: on a machine shared with other work, another process taking the cores
for a few tens of milliseconds drops a frame at any rate, and a second trial tells that apart
from an engine that is too slow. The search doubles the rate until it fails, then bisects between
the last pass and the first failure down to ``--resolution`` fps. The result is a lower bound
for the load at the time (printed with it).

    .venv/bin/python tools/bench_realtime_max.py
    .venv/bin/python tools/bench_realtime_max.py --size 720p --frames 600 --start 100
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency import SIZES, arena_config, measure, render  # noqa: E402


def search(size: str, animals: int, n_frames: int, start: float, resolution: float, ceiling: float,
           attempts: int) -> tuple[float, list[dict]]:
    """(highest passing rate, every trial) for one size."""
    width, height = SIZES[size]
    trials: list[dict] = []
    with tempfile.TemporaryDirectory() as out_dir:
        config = arena_config(width, height, animals, n_frames, start, out_dir)
        frames = render(config)

        def passes(fps: float) -> bool:
            for _ in range(attempts):
                result = measure(config, frames, fps)
                trials.append(result)
                ok = result["frames_dropped"] == 0
                print(f"  {size} {fps:7.1f} fps: dropped {result['frames_dropped']:4d}, step p50 "
                      f"{result['step_ms_p50']:.2f} ms, capture->subscriber p99 {result['p99']:.2f} ms, "
                      f"load {os.getloadavg()[0]:.1f}  {'pass' if ok else 'FAIL'}", flush=True)
                if ok:
                    return True
            return False

        good, bad = 0.0, None
        fps = start
        while bad is None and fps <= ceiling:
            if passes(fps):
                good, fps = fps, fps * 2
            else:
                bad = fps
        if bad is None:
            return good, trials
        while bad - good > resolution:
            middle = (good + bad) / 2
            if passes(middle):
                good = middle
            else:
                bad = middle
    return good, trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), action="append", help="default: both")
    parser.add_argument("--animals", type=int, default=20)
    parser.add_argument("--frames", type=int, default=500, help="frames per trial")
    parser.add_argument("--start", type=float, default=60.0, help="first rate tried (fps)")
    parser.add_argument("--attempts", type=int, default=2, help="trials per rate; one without drops passes")
    parser.add_argument("--resolution", type=float, default=10.0, help="stop bisecting at this width (fps)")
    parser.add_argument("--ceiling", type=float, default=2000.0)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    found = {}
    for size in args.size or ["720p", "1080p"]:
        found[size], _ = search(size, args.animals, args.frames, args.start, args.resolution, args.ceiling,
                                args.attempts)
    load = os.getloadavg()
    print(f"load after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for size, fps in found.items():
        print(f"{size}, {args.animals} animals: no dropped frame up to {fps:.0f} fps "
              f"({args.frames} frames per trial)")


if __name__ == "__main__":
    main()
