"""Identity accuracy on simulated look-alike animals, over several simulator settings.

Each case renders the simulated arena (``sim:`` source, exact ground truth), tracks it with the
live engine (the live appearance model trained inline, so that the online figure does not depend
on the machine's speed), then runs ``toxrt refine`` (accumulation). It prints the solo accuracy of
the identities published frame by frame (online), of the trajectories ``toxrt track`` writes
(track) and after refine, the estimated accuracy, and the times.

    .venv/bin/python tools/bench_identity_sim.py                # the default cases
    .venv/bin/python tools/bench_identity_sim.py --cases 8:0.1:0 8:0.3:0 --frames 1500

A case is ``animals:appearance_spread:seed``; ``appearance_spread`` 0 makes identical animals,
1 clearly different ones (toxrt.sim.raster.draw_appearance).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from bench_accuracy import online_trajectories  # noqa: E402
from toxrt.config import build_config  # noqa: E402
from toxrt.evaluation.groundtruth import GroundTruth  # noqa: E402
from toxrt.evaluation.metrics import evaluate  # noqa: E402
from toxrt.io.trajectory_files import load_trajectories  # noqa: E402
from toxrt.config import RefineConfig  # noqa: E402
from toxrt.offline.refine import refine_session  # noqa: E402
from toxrt.tracking import run_tracking  # noqa: E402
from toxrt.io.session_reader import load_session  # noqa: E402
from toxrt.sim.arena import SimulatedArena  # noqa: E402

DEFAULT_CASES = ["8:0.1:0", "8:0.3:0", "8:0.1:1", "8:0.3:2", "4:0.1:3", "14:0.3:4", "8:0.0:5"]


def run_case(animals: int, spread: float, seed: int, frames: int, body_length: float, out: Path) -> dict:
    values = {"name": f"sim{animals}_{spread}_{seed}", "video_paths": [f"sim:{animals}_{spread}_{seed}"],
              "number_of_animals": animals, "output_dir": str(out),
              "sim": {"frames": frames, "seed": seed, "appearance_spread": spread, "body_length_px": body_length},
              "appearance": {"live_inline": True},
              "streaming": {"publish_address": "", "marker_address": ""}}
    arena = SimulatedArena(build_config(values).sim, animals)
    config = build_config({**arena.tracking_parameters(), **values})
    t0 = time.monotonic()
    summary = run_tracking(config, progress=False, overwrite=True)
    track_s = time.monotonic() - t0
    truth = GroundTruth(np.arange(arena.n_frames), list(range(1, animals + 1)), arena.positions, arena.crossing)
    folder = Path(summary["session"])
    track = evaluate(load_trajectories(folder)[0], truth, arena.body_length_px).accuracy_solo
    online = evaluate(online_trajectories(load_session(folder)), truth, arena.body_length_px).accuracy_solo
    refined = refine_session(folder, RefineConfig(), progress=False)
    refined_accuracy = evaluate(load_trajectories(folder)[0], truth, arena.body_length_px).accuracy_solo
    return {"animals": animals, "spread": spread, "seed": seed, "frames": frames, "online": online, "track": track,
            "estimated": summary.get("estimated_accuracy"), "refined": refined_accuracy,
            "refined_estimated": refined.estimated_accuracy, "track_s": track_s,
            "identity_s": summary.get("identity_seconds"), "refine_s": refined.seconds,
            "live_model_from_frame": summary.get("live_model_from_frame"), "warnings": summary.get("warnings", [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="animals:spread:seed")
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--body-length", type=float, default=28.0, help="pixels")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    head = (f"{'animals':>7} {'spread':>6} {'seed':>4} {'online':>7} {'track':>7} {'est.':>7} {'refined':>7} "
            f"{'est.':>7} {'track s':>7} {'ident s':>7} {'refine s':>8} {'model at':>8}")
    print(head)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for case in args.cases:
            animals, spread, seed = case.split(":")
            r = run_case(int(animals), float(spread), int(seed), args.frames, args.body_length, Path(out))
            rows.append(r)
            print(f"{r['animals']:>7} {r['spread']:>6} {r['seed']:>4} {100 * r['online']:>7.2f} {100 * r['track']:>7.2f} "
                  f"{100 * r['estimated']:>7.2f} {100 * r['refined']:>7.2f} {100 * r['refined_estimated']:>7.2f} "
                  f"{r['track_s']:>7.1f} {r['identity_s']:>7.1f} {r['refine_s']:>8.1f} {r['live_model_from_frame']:>8}",
                  flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("solo accuracy in % (crossings left out), one body length radius; model at: frame from which the live "
          "appearance model decided")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
