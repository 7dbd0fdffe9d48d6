"""Memory of a long live session: resident memory after 1,000 frames and after 100,000.

Runs the whole live session (segmentation, linking, live identities, recording to disk) on a
simulated arena and reads the resident set size (VmRSS) of the process and of its children (the
live appearance learner runs in one) at the checkpoints.

    .venv/bin/python tools/bench_memory.py --animals 20 --frames 100000
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from toxrt.config import build_config
from toxrt.tracking import run_tracking
from toxrt.sim.arena import SimulatedArena


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def children_rss_mb() -> float:
    """Resident memory of this process's children (the live appearance learner)."""
    total = 0.0
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as handle:
            for pid in handle.read().split():
                try:
                    total += rss_mb(pid)
                except (OSError, RuntimeError):
                    pass  # it just ended
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--animals", type=int, default=20)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--first-checkpoint", type=int, default=1_000)
    parser.add_argument("--out", default=None, help="session folder parent (default: a temporary folder)")
    args = parser.parse_args()

    out = args.out or tempfile.mkdtemp(prefix="toxrt_mem_")
    values = {"name": "memory", "video_paths": ["sim:memory"], "number_of_animals": args.animals, "output_dir": out,
              "sim": {"frames": args.frames, "width": 800, "height": 600, "body_length_px": 24, "seed": 7}}
    arena = SimulatedArena(build_config(values).sim, args.animals)
    config = build_config({**values, **arena.tracking_parameters()})
    del arena
    marks: dict[int, float] = {}
    started = time.perf_counter()
    checkpoints = sorted({args.first_checkpoint, args.frames // 4, args.frames // 2, 3 * args.frames // 4, args.frames})

    def on_frame(result) -> None:
        count = result.frame_index + 1
        if count in checkpoints:
            own, learner = rss_mb(), children_rss_mb()
            marks[count] = own + learner
            print(f"frame {count:>7}: RSS {marks[count]:8.1f} MB (tracker {own:.1f}, learner {learner:.1f}) "
                  f"({time.perf_counter() - started:6.0f} s)", flush=True)

    summary = run_tracking(config, progress=False, overwrite=True, on_frame=on_frame)
    first, last = marks[checkpoints[0]], marks[checkpoints[-1]]
    print(f"{args.animals} animals, {summary['frames']} frames, session {summary['session']}")
    print(f"RSS growth from frame {checkpoints[0]} to {checkpoints[-1]}: {last - first:+.1f} MB "
          f"(target: at most +50 MB)")


if __name__ == "__main__":
    main()
