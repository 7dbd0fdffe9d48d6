"""Offline refinement benchmark: time, peak memory and identity accuracy before and after.

For each case the live engine tracks the video (``toxrt.tracking.run_tracking``, no ZeroMQ), the live
trajectories are evaluated, then ``toxrt.offline.refine.refine_session`` runs in a child process
(so that its peak resident memory, ``VmHWM`` of ``/proc/self/status``, is the refinement's alone:
torch, the network, the embeddings, K-means) and the refined trajectories are evaluated against the
same ground truth. One table is printed, with the command that made it.

Cases (``--cases``):

``sim8_500``, ``sim8_1500``, ``sim8_15000``
    the simulated arena with 8 animals that look alike (``sim.appearance_spread`` = 0.25), 500,
    1,500 and 15,000 frames (10 minutes at 25 fps); ground truth from the simulator.
``zebrafish14_fasttrack``, ``flies2_sleap``
    real videos of ``../shared/data`` with human ground truth, tracked with
    ``tools/datasets/<name>.toml``.

    .venv/bin/python tools/bench_refine.py                               # every case
    .venv/bin/python tools/bench_refine.py --cases sim8_500 --repeats 3  # timing repeated
    .venv/bin/python tools/bench_refine.py --cases sim8_500 --option network=resnet18

Refinement options (``--option key=value``, repeated) are keys of the ``[refine]`` table (``toxrt.config.RefineConfig``); by default the
CPU defaults. Each run starts from scratch (``resume=false``). The machine may be shared: run with
``--repeats`` and read the minimum and the spread. Results also go to ``<out>/bench_refine.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toxrt.config import build_config, load_config  # noqa: E402
from toxrt.evaluation.groundtruth import GroundTruth  # noqa: E402
from toxrt.evaluation.metrics import evaluate  # noqa: E402
from toxrt.io.trajectory_files import load_trajectories  # noqa: E402
from toxrt.tracking import run_tracking  # noqa: E402
from toxrt.sim.arena import SimulatedArena  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # shared/ beside the project
PARAMS = REPO / "tools" / "datasets"
NO_STREAMING = {"streaming.publish_address": "", "streaming.marker_address": ""}
SIM_SPREAD = 0.25  # "subtly different" animals


@dataclass(frozen=True)
class Case:
    name: str
    frames: int = 0  # simulated frames; 0 = a real dataset
    animals: int = 8


CASES = {c.name: c for c in (Case("sim8_500", 500), Case("sim8_1500", 1500), Case("sim8_15000", 15000),
                             Case("zebrafish14_fasttrack"), Case("flies2_sleap"))}


def sim_values(case: Case, out: Path) -> dict[str, Any]:
    return {"name": case.name, "video_paths": [f"sim:{case.name}"], "number_of_animals": case.animals,
            "output_dir": str(out), "trajectories_formats": ["npy"],
            "sim": {"frames": case.frames, "seed": 0, "appearance_spread": SIM_SPREAD},
            "streaming": {"publish_address": "", "marker_address": ""}}


def track(case: Case, out: Path) -> tuple[Path, GroundTruth, float]:
    """Run the live engine; returns (session folder, ground truth, body length in px)."""
    if case.frames:
        values = sim_values(case, out)
        arena = SimulatedArena(build_config(values).sim, case.animals)
        config = build_config({**values, **arena.tracking_parameters()})
        truth = GroundTruth(np.arange(arena.n_frames), list(range(1, case.animals + 1)),
                            arena.positions.astype(np.float64), arena.crossing)
        body_length = arena.body_length_px
    else:
        config = load_config(PARAMS / f"{case.name}.toml", {"output_dir": str(out), **NO_STREAMING})
        truth = GroundTruth.from_csv(DATA / case.name / "groundtruth.csv")
        body_length = math.nan
    t0 = time.monotonic()
    summary = run_tracking(config, progress=False, overwrite=True)
    logging.info("%s tracked in %.1f s", case.name, time.monotonic() - t0)
    folder = Path(summary["session"])
    if not case.frames:  # the engine's estimate, as tools/bench_accuracy.py uses for these two
        body_length = float(load_trajectories(folder)[1].get("body_length") or math.nan)
    return folder, truth, body_length


def accuracy(npy: Path, truth: GroundTruth, body_length: float) -> tuple[float, float]:
    trajectories = load_trajectories(npy)[0]
    report = evaluate(trajectories, truth, body_length)
    return report.accuracy_solo, report.accuracy_all


def refine_in_child(folder: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Run refine_session in a fresh interpreter; returns its summary plus seconds and peak RSS."""
    cmd = [sys.executable, __file__, "--child", str(folder), json.dumps({**options, "resume": False})]
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        raise RuntimeError(f"refinement of {folder} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def child(folder: str, options_json: str) -> None:
    """The child process: refine, then print the summary and this process's peak RSS as one JSON line."""
    from toxrt.config import RefineConfig
    from toxrt.offline.refine import refine_session
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    t0 = time.monotonic()
    summary = refine_session(Path(folder), RefineConfig(**json.loads(options_json)), progress=False)
    seconds = time.monotonic() - t0
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    print(json.dumps({**summary.as_dict(), "refine_s": seconds, "peak_rss_mb": peak_kb / 1024}, default=float))


def run_case(case: Case, out: Path, options: dict[str, Any], repeats: int) -> dict[str, Any]:
    folder, truth, body_length = track(case, out)
    live_npy = folder / "trajectories" / "trajectories.npy"
    live = accuracy(live_npy, truth, body_length)
    runs = [refine_in_child(folder, options) for _ in range(repeats)]
    refined = accuracy(folder / "trajectories" / "trajectories.npy", truth, body_length)
    last = runs[-1]
    times = [r["refine_s"] for r in runs]
    return {"case": case.name, "session": str(folder), "animals": last["number_of_animals"],
            "images": last["images"], "fragments": last["fragments"], "batches": last["batches"],
            "refine_s": times, "refine_s_min": min(times), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "live_solo": live[0], "live_all": live[1], "refined_solo": refined[0], "refined_all": refined[1],
            "silhouette": last["silhouette"], "estimated_accuracy": last["estimated_accuracy"],
            "connectivity": last["fragment_connectivity"], "identified": last["fraction_identified"],
            "images_changed": last["images_changed"], "status": last["status"], "warnings": last["warnings"],
            "body_length": body_length}


def _pct(x: float) -> str:
    return "   n/a" if x is None or not math.isfinite(x) else f"{100 * x:6.2f}"


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = (f"{'case':<22} {'imgs':>7} {'batch':>5} {'time s':>14} {'peakMB':>6} {'solo live->ref':>15} "
            f"{'all live->ref':>15} {'silh':>5} {'est.acc':>7} {'conn':>5} {'ident':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        times = r["refine_s"]
        t = f"{min(times):.0f}" + (f" ({min(times):.0f}-{max(times):.0f})" if len(times) > 1 else "")
        lines.append(f"{r['case']:<22} {r['images']:>7} {r['batches']:>5} {t:>14} {r['peak_rss_mb']:>6.0f} "
                     f"{_pct(r['live_solo'])}->{_pct(r['refined_solo'])} {_pct(r['live_all'])}->{_pct(r['refined_all'])} "
                     f"{r['silhouette']:>5.3f} {_pct(r['estimated_accuracy']):>7} {r['connectivity']:>5.2f} "
                     f"{_pct(r['identified'])}")
    return lines


def parse_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option {text!r}: expected key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE")
    parser.add_argument("--option", action="append", type=parse_option, default=[],
                        help="[refine] key as key=value (repeatable)")
    parser.add_argument("--repeats", type=int, default=1, help="refinements per case (timing spread)")
    parser.add_argument("--out", type=Path, default=REPO / "bench_out" / "refine")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    options = dict(args.option)
    rows = []
    for name in args.cases:
        case = CASES[name]
        if not case.frames and not (DATA / name).is_dir():
            print(f"{name}: skipped, no data under {DATA}", file=sys.stderr)
            continue
        rows.append(run_case(case, args.out.resolve(), options, args.repeats))
        print("\n".join(table(rows[-1:])[2:]), file=sys.stderr, flush=True)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "tools/bench_refine.py", *argv])
    print(f"\n$ {command}\n(torch threads: {os.cpu_count()} cores; options: {options or 'CPU defaults'})")
    print("\n".join(table(rows)))
    print("time s: refine_session wall time in the child (min, and range over --repeats); peakMB: the child's "
          "VmHWM; solo/all: identity accuracy %, matching radius one body length; silh: silhouette; est.acc: "
          "estimated accuracy; conn: fragment connectivity; ident: fraction of images identified.")
    for r in rows:
        for w in r["warnings"]:
            print(f"{r['case']}: WARNING {w}")
    (args.out / "bench_refine.json").write_text(json.dumps({"argv": argv, "options": options, "rows": rows},
                                                            indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
