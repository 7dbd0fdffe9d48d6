"""Wall time and peak memory of ``toxrt refine`` (accumulation) on simulated sessions.

Each case tracks a simulated arena of look-alike animals (``appearance_spread`` 0.3) once, then runs
``toxrt refine SESSION`` in a child process, as a user would, and reads the child's wall time and
peak resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Tracking is not timed.

    .venv/bin/python tools/bench_refine_time.py                       # 8 animals: 500 frames, 10 minutes
    .venv/bin/python tools/bench_refine_time.py --cases 8:500 14:1500

A case is ``animals:frames``; frames are at 25 fps (15,000 frames = 10 minutes).
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toxrt.config import build_config  # noqa: E402
from toxrt.offline.refine import OFFLINE_DIR  # noqa: E402
from toxrt.tracking import run_tracking  # noqa: E402
from toxrt.sim.arena import SimulatedArena  # noqa: E402

TOXRT = [sys.executable, "-m", "toxrt"]


def track(animals: int, frames: int, out: Path) -> Path:
    values = {"name": f"refine{animals}x{frames}", "video_paths": ["sim:refine"], "number_of_animals": animals,
              "output_dir": str(out), "sim": {"frames": frames, "seed": 7, "appearance_spread": 0.3},
              "streaming": {"publish_address": "", "marker_address": ""}}
    arena = SimulatedArena(build_config(values).sim, animals)
    summary = run_tracking(build_config({**arena.tracking_parameters(), **values}), progress=False, overwrite=True)
    return Path(summary["session"])


def refine(folder: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB of the refine process, its last output line)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    done = subprocess.run([*TOXRT, "refine", str(folder), "--quiet"], capture_output=True, text=True)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"toxrt refine failed: {done.stderr.strip().splitlines()[-1:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:  # an earlier child was larger: ru_maxrss is the maximum over all children
        peak = float("nan")
    quality = next((line for line in done.stdout.splitlines() if line.startswith("quality")), "")
    return wall, peak / 1024.0, quality


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["8:500", "8:15000"], help="animals:frames")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} cores; load average at start: {os.getloadavg()[0]:.2f}")
    # the smaller cases first: ru_maxrss of children only ever grows
    cases = sorted((tuple(int(v) for v in case.split(":")) for case in args.cases), key=lambda c: c[0] * c[1])
    with tempfile.TemporaryDirectory() as out:
        for animals, frames in cases:
            folder = track(animals, frames, Path(out))
            wall, peak_mb, quality = refine(folder)
            print(f"{animals} animals, {frames} frames ({frames / 25 / 60:.1f} min at 25 fps): refine {wall:.1f} s, "
                  f"peak memory {peak_mb:.0f} MB; {quality.removeprefix('quality:').strip()}", flush=True)
            assert (folder / OFFLINE_DIR / "refine_summary.json").exists()
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
