"""Per-frame cost against the number of animals, stage by stage, with its tail.

A simulated arena (1280x1280 by default) with N animals is rendered into memory, then each frame
goes through the live stage as a session runs it: detection (segmentation and features), then
``LiveTracker.step`` (linking and live identities), then the ``pos`` message (``animal_arrays`` and
msgpack encoding). Every stage is timed per frame with ``perf_counter``; a warm-up (as sessions do)
is excluded. ``link`` and ``identity`` are the linker's and the identity stage's own calls inside
``step``; ``tracking`` is ``step`` without detection, comparable to TRex's published 3.6 ms per
frame for 100 animals (detection excluded). The worst frames are listed with what they spent
their time on, so that spikes can be traced. ``--clock cpu`` times with the thread's CPU clock
instead of the wall clock: on a busy machine it shows the work itself, without the time the thread
waited for a core.

    .venv/bin/python tools/bench_scale.py                          # 40, 100, 200 animals at 1280x1280
    .venv/bin/python tools/bench_scale.py --animals 40 --frames 600 --size 1280x1280
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toxrt.config import build_config  # noqa: E402
from toxrt.pipeline import LiveTracker, prepare, warm_up  # noqa: E402
from toxrt.stream.wire import encode_positions  # noqa: E402
from toxrt.sources.simulated import SimulatedSource  # noqa: E402
from toxrt.stream.live_stream import animal_arrays  # noqa: E402
from toxrt.types import Frame  # noqa: E402

STAGES = ("detect", "link", "identity", "tracking", "message", "total")


def arena_config(width: int, height: int, animals: int, frames: int, body_length_px: float):
    values = {"name": "scale", "video_paths": ["sim:scale"], "number_of_animals": animals,
              "sim": {"width": width, "height": height, "frames": frames, "fps": 25.0, "seed": 5,
                      "body_length_px": body_length_px}}
    return build_config({**values, **SimulatedSource(build_config(values)).arena.tracking_parameters()})


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = time.perf_counter


class Timed:
    """Wraps a bound method and keeps the duration of its latest call."""

    def __init__(self, method):
        self.method, self.last = method, 0.0

    def __call__(self, *args, **kwargs):
        started = clock()
        try:
            return self.method(*args, **kwargs)
        finally:
            self.last = clock() - started


def measure(width: int, height: int, animals: int, frames: int, body_length_px: float) -> dict:
    config = arena_config(width, height, animals, frames, body_length_px)
    source = SimulatedSource(config)
    setup = prepare(config, source)
    images = [image.copy() for _, image in source.arena.frames()]
    warm_up(config, setup, images[0])
    gc.freeze()  # as the session loop does
    tracker = LiveTracker(config, setup)
    detect = tracker.detector()
    link = tracker.linker.update = Timed(tracker.linker.update)
    identity = tracker.identities.update = Timed(tracker.identities.update)
    times = np.zeros((len(images), len(STAGES)))
    blobs = np.zeros(len(images), int)
    for k, image in enumerate(images):
        t0 = clock()
        frame = detect(Frame(k, k / 25.0, image))
        t1 = clock()
        result = tracker.step(frame)
        t2 = clock()
        arrays = animal_arrays(result)
        encode_positions(k, k, 0.0, 0.0, **arrays)
        t3 = clock()
        times[k] = (t1 - t0, link.last, identity.last, t2 - t1, t3 - t2, t3 - t0)
        blobs[k] = len(result.blobs)
    gc.unfreeze()
    ms = times * 1e3
    p50, p99 = np.percentile(ms, 50, axis=0), np.percentile(ms, 99, axis=0)
    worst = np.argsort(ms[:, -1])[::-1][:5]
    return {
        "size": f"{width}x{height}", "clock": clock.__name__, "animals": animals, "frames": len(images), "blobs_per_frame": float(blobs.mean()),
        "p50_ms": dict(zip(STAGES, p50.round(3).tolist())), "p99_ms": dict(zip(STAGES, p99.round(3).tolist())),
        "max_ms": dict(zip(STAGES, ms.max(axis=0).round(3).tolist())),
        "worst_frames": [{"frame": int(k), **dict(zip(STAGES, ms[k].round(2).tolist()))} for k in worst],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--animals", type=int, action="append", help="default: 40 100 200")
    parser.add_argument("--size", default="1280x1280")
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--body-length", type=float, default=24.0, help="pixels")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    width, height = map(int, args.size.split("x"))
    print(f"load: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores; {args.clock} clock")
    print(f"{'animals':>7} {'blobs':>6}  " + "  ".join(f"{s + ' p50/p99':>19}" for s in STAGES) + "   (ms per frame)")
    results = []
    for animals in args.animals or [40, 100, 200]:
        r = measure(width, height, animals, args.frames, args.body_length)
        results.append(r)
        print(f"{animals:7d} {r['blobs_per_frame']:6.1f}  " + "  ".join(
            f"{r['p50_ms'][s]:9.2f}/{r['p99_ms'][s]:<9.2f}" for s in STAGES), flush=True)
        for w in r["worst_frames"][:3]:
            print(f"{'':16}worst frame {w['frame']}: " + ", ".join(f"{s} {w[s]:.2f}" for s in STAGES))
    print(f"load now: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
