"""Tracking throughput against decoding alone, on the same video file.

For each video: the fps of a bare ``cv2.VideoCapture.read()`` loop, then the fps of the live
frame loop of ``toxrt track`` (decoding runs in its reader thread, tracking in the main thread),
and their ratio (target: at least 90%).

    .venv/bin/python tools/bench_decode.py tools/datasets/spiders2_tracktor.toml [--frames 1500]
    .venv/bin/python tools/bench_decode.py --simulate 1280x720 --animals 20 --frames 1500
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2

from toxrt.config import build_config, load_config
from toxrt.session import run_session
from toxrt.synthetic import write_simulation


def decode_fps(path: str, frames: int | None) -> tuple[float, int]:
    capture = cv2.VideoCapture(path)
    count = 0
    started = time.perf_counter()
    while frames is None or count < frames:
        ok, _ = capture.read()
        if not ok:
            break
        count += 1
    elapsed = time.perf_counter() - started
    capture.release()
    return count / elapsed, count


def simulated_params(size: str, animals: int, frames: int) -> Path:
    width, height = map(int, size.split("x"))
    folder = Path(tempfile.mkdtemp(prefix="toxrt_decode_"))
    sim = build_config({"sim": {"width": width, "height": height, "frames": frames, "body_length_px": 40,
                                "seed": 11}}).sim
    paths = write_simulation(folder, sim, animals)
    # Lab videos are compressed; re-encode the lossless simulation as MPEG-4 so decoding costs what it usually does.
    source = cv2.VideoCapture(str(paths["video"]))
    mp4 = folder / "video.mp4"
    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), sim.fps, (width, height))
    while True:
        ok, image = source.read()
        if not ok:
            break
        writer.write(image)
    writer.release()
    params = paths["params"]
    params.write_text(params.read_text().replace('"video.avi"', '"video.mp4"'))
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="*", help="parameter files of the videos to measure")
    parser.add_argument("--simulate", default=None, help="also measure a simulated video of this size, e.g. 1280x720")
    parser.add_argument("--animals", type=int, default=20)
    parser.add_argument("--frames", type=int, default=None, help="frames to use from each video")
    args = parser.parse_args()
    params = [Path(p) for p in args.params]
    if args.simulate:
        params.append(simulated_params(args.simulate, args.animals, args.frames or 1500))
    for path in params:
        overrides = {"output_dir": tempfile.mkdtemp(prefix="toxrt_decode_out_")}
        if args.frames:
            overrides["tracking_intervals"] = [[0, args.frames]]
        config = load_config(path, overrides)
        video = config.video_paths[0]
        decoded, count = decode_fps(video, args.frames)
        summary = run_session(config, progress=False, overwrite=True)
        ratio = summary["fps"] / decoded
        print(f"{Path(video).name} ({path.name}): {count} frames; decode alone {decoded:.1f} fps; "
              f"tracking {summary['fps']:.1f} fps ({100 * ratio:.0f}% of decode); "
              f"step p50 {summary['step_ms_p50']:.2f} ms p99 {summary['step_ms_p99']:.2f} ms")


if __name__ == "__main__":
    main()
