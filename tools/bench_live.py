"""Per-frame time of the live stage, from a frame in memory to identities out (decode excluded).

Frames of a simulated arena are rendered into memory first; then ``LiveTracker.step`` is timed on
each, pinned to one core with OpenCV single-threaded. Prints p50 / p95 / p99 / max in ms per size,
with the live appearance learner on (its process on the other core, as in a session) and off (ToxId
alone), one after the other in the same process, and the same steps stage by stage
(``LiveTracker.stage_seconds``: segmentation, linking, identities and the rest of the step).

    .venv/bin/python tools/bench_live.py --animals 20 --frames 600
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import cv2
import numpy as np

from toxrt.config import build_config
from toxrt.pipeline import LiveTracker, prepare
from toxrt.sources.simulated import SimulatedSource
from toxrt.types import Frame

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}


def bench(size_name: str, animals: int, frames: int, body_length: float, warmup: int, learner: bool) -> dict:
    width, height = SIZES[size_name]
    values = {
        "video_paths": ["sim:bench"],
        "number_of_animals": animals,
        "appearance": {"live": learner},
        "sim": {"width": width, "height": height, "frames": frames + warmup, "body_length_px": body_length, "seed": 1},
    }
    config = build_config(values)
    source = SimulatedSource(config)
    config = build_config({**values, **source.arena.tracking_parameters()})
    source = SimulatedSource(config)
    setup = prepare(config, source)
    images = [image for _, image in source.arena.frames()]
    # Linux affinity is per thread and inherited: the learner's thread, started by LiveTracker, may
    # use every core (as in a session), while this thread, the frame loop, stays pinned to one.
    pinned = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if pinned is not None:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    tracker = LiveTracker(config, setup)
    if pinned is not None:
        os.sched_setaffinity(0, pinned)
    if tracker.learner is not None:
        tracker.learner.wait_until_ready()  # as run_tracking does before its frame loop
    times = np.empty(len(images))
    stages = np.empty((len(images), 3))  # segmentation, linking, identities and the rest (stage by stage)
    found = 0
    for index, image in enumerate(images):
        frame = Frame(index, index / source.fps, image)
        t0 = time.perf_counter()
        result = tracker.step(frame)
        times[index] = time.perf_counter() - t0
        found += len(result.blobs)
        stages[index] = tracker.stage_seconds  # measured inside step, around its own stages
    trainings = tracker.learner.stats.trainings if tracker.learner is not None else 0
    tracker.close()
    ms = times[warmup:] * 1e3
    stage_ms = stages[warmup:] * 1e3
    return {
        "stages": {name: (np.percentile(stage_ms[:, i], 50), np.percentile(stage_ms[:, i], 99))
                   for i, name in enumerate(("segmentation", "linking", "identities and the rest"))},
        "size": size_name,
        "animals": animals,
        "learner": learner,
        "trainings": trainings,
        "frames": len(ms),
        "blobs_per_frame": found / len(images),
        "p50": np.percentile(ms, 50),
        "p95": np.percentile(ms, 95),
        "p99": np.percentile(ms, 99),
        "max": ms.max(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--animals", type=int, default=20)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--body-length", type=float, default=40.0, help="pixels")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    parser.add_argument("--learner", default="both", choices=["both", "on", "off"],
                        help="the live appearance learner on, off, or both one after the other")
    args = parser.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        cv2.setNumThreads(1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{'all cores' if args.all_cores else 'pinned to one core'}; opencv {cv2.__version__}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    for size in args.sizes:
        for learner in {"both": (True, False), "on": (True,), "off": (False,)}[args.learner]:
            r = bench(size, args.animals, args.frames, args.body_length, args.warmup, learner)
            print(f"{r['size']:>6} {r['animals']} animals, {r['frames']} frames, {r['blobs_per_frame']:.1f} blobs/frame, "
                  f"learner {'on (%d trainings)' % r['trainings'] if learner else 'off'}: "
                  f"p50 {r['p50']:.2f} ms  p95 {r['p95']:.2f} ms  p99 {r['p99']:.2f} ms  max {r['max']:.2f} ms")
            print("        stage by stage (p50 / p99): " + ", ".join(
                f"{name} {p50:.2f} / {p99:.2f} ms" for name, (p50, p99) in r["stages"].items()))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
