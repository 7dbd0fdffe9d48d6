"""Closed-loop round trip: from a frame's capture to the stimulus marker it caused arriving back.

A pre-rendered simulated arena (20 animals, 720p by default) is replayed in real time through
the session loop (the harness of ``bench_latency.py``) while ``tools/closed_loop_example.py`` runs
in another process: it receives the positions, switches its "stimulus" on whenever an animal
enters a zone, and sends a ``stimulus_on`` marker carrying the triggering frame's ``t_capture``.
The session records each marker with its arrival time, so the reaction time read from the
recorded session is ``t_arrival - payload.t_capture``: capture -> tracking -> publish -> the
stimulus program -> marker back into toxrt.

    .venv/bin/python tools/bench_roundtrip.py
    .venv/bin/python tools/bench_roundtrip.py --size 1080p --fps 60 --seconds 10
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_latency import SIZES, arena_config, free_port, render, run_live  # noqa: E402


def roundtrip(size: str, fps: float, seconds: float, animals: int) -> dict:
    """Reaction times (ms) of every stimulus_on marker of one run, and the run's counters."""
    width, height = SIZES[size]
    with tempfile.TemporaryDirectory() as out_dir:
        config = arena_config(width, height, animals, int(round(fps * seconds)), fps, out_dir,
                              marker_address=f"tcp://127.0.0.1:{free_port()}")
        frames = render(config)
        # The right half of the arena: some animal crosses the midline every few dozen frames.
        zone = f"{width / 2:.0f},0,{width:.0f},{height:.0f}"
        peer = [str(HERE / "closed_loop_example.py"), "--address", config.streaming.publish_address,
                "--markers", config.streaming.marker_address, "--zone", zone, "--duration", f"{seconds + 3:.1f}"]
        loop = run_live(config, frames, fps, peer, wait_ready=False)
    on = [e for e in loop["events"] if e.get("type") == "marker" and e.get("label") == "stimulus_on"]
    if not on:
        raise RuntimeError(f"no stimulus_on marker was recorded; the example said: {loop['peer_stderr']}")
    t_capture = np.array([e["payload"]["t_capture"] for e in on])
    total = (np.array([e["t_arrival"] for e in on]) - t_capture) * 1e3
    program = (np.array([e["t_sent"] for e in on]) - t_capture) * 1e3
    frames_later = np.array([e["frame"] - e["payload"]["frame"] for e in on])
    return {"markers": len(on), "total": total, "program": program, "frames_later": frames_later,
            "frames_dropped": loop["frames_dropped"], "frames": loop["frames"],
            "markers_rejected": loop.get("markers_rejected", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="720p")
    parser.add_argument("--fps", type=float, default=120.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--animals", type=int, default=20)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    r = roundtrip(args.size, args.fps, args.seconds, args.animals)
    print(f"{args.size} at {args.fps:g} fps, {args.animals} animals: {r['frames']} frames tracked, "
          f"{r['frames_dropped']} dropped, {r['markers']} stimulus_on markers recorded")
    for name, label in (("program", "capture -> marker sent (the example's own log)"),
                        ("total", "capture -> marker recorded in toxrt (round trip)")):
        p50, p95, p99 = np.percentile(r[name], [50, 95, 99])
        print(f"  {label}: p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms, max {r[name].max():.2f} ms")
    later = r["frames_later"]
    print(f"  marker recorded at the triggering frame + {np.median(later):.0f} (median), "
          f"+ {later.max()} (max) frames")


if __name__ == "__main__":
    main()
