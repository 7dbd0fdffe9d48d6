"""Tracking a video file against its two-core limit.

For each video, on its first ``--frames`` frames, each in a process of its own:

* decode: CPU seconds per frame of decoding to grey (``VideoSource``, as ``toxrt track`` reads),
  alone on one core (``sched_setaffinity``); also the fps of decoding alone on both cores;
* track: CPU seconds per frame of the session's frame loop (tracking, recording; no publishing,
  as for a file) on frames decoded beforehand into memory, alone on one core;
* session: fps of ``toxrt track``'s frame loop on the file on both cores (decoding in the reader
  thread, tracking in the main thread), measured over the loop as the session summary reports it.

The two-core limit is ``2 / (decode CPU s/frame + track CPU s/frame)``; the target is a session fps of
at least 90% of it, or of the decode-alone fps on two cores when that is lower.

    .venv/bin/python tools/bench_decode.py tools/datasets/flies2_sleap.toml tools/datasets/spiders2_tracktor.toml \\
        --simulate 1280x720 --frames 1500
    .venv/bin/python tools/bench_decode.py --simulate 1280x720 --sweep    # also FFmpeg/OpenCV thread counts

``--where`` first shows where decoding time goes, per frame on one core (process CPU): the decoder
itself (``grab``), then BGR (``retrieve`` + ``cvtColor``) against the luma plane (``retrieve`` with
``CAP_PROP_CONVERT_RGB = 0`` + the calibrated table), with 1 and 2 FFmpeg threads.

``--sweep`` repeats the session for every combination of FFmpeg decoding threads (1, 2) and
OpenCV threads (1, 2): the figures that chose ``toxrt.sources.decode.DECODE_THREADS``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def load(params: str, frames: int, out_dir: str):
    from toxrt.config import load_config

    return load_config(params, {"output_dir": out_dir, "tracking_intervals": [[0, frames]],
                                "trajectories_formats": ["npy"]})


def child(mode: str, params: str, frames: int, ffmpeg_threads: int, cv_threads: int, ahead: bool) -> dict:
    """One measurement in this process (run through ``--child``)."""
    import cv2

    from toxrt.sources import decode, files as source

    if not ahead:
        source.AHEAD_WHEN_QUEUED = 1 << 30  # the reader thread only decodes

    decode.DECODE_THREADS = ffmpeg_threads
    if cv_threads:
        cv2.setNumThreads(cv_threads)
    if mode in ("decode", "track"):
        os.sched_setaffinity(0, {0})
    from toxrt.pipeline import LiveTracker, prepare
    from toxrt.sources.files import VideoSource

    with tempfile.TemporaryDirectory(prefix="toxrt_decode_") as out_dir:
        config = load(params, frames, out_dir)
        if mode in ("decode", "decode2"):
            source = VideoSource(config.video_paths, config.frames_per_second, config.tracking_intervals)
            cpu, wall = time.process_time(), time.perf_counter()
            count = sum(1 for _ in source)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            return {"frames": count, "cpu_s_per_frame": cpu / count, "fps": count / wall}
        if mode == "track":
            return track_alone(config, prepare, LiveTracker, VideoSource)
        from toxrt.tracking import run_tracking

        summary = run_tracking(config, progress=False, overwrite=True)
        return {"frames": summary["frames"], "fps": summary["fps"], "step_ms_p50": summary["step_ms_p50"],
                "step_ms_p99": summary["step_ms_p99"], "detected_by_reader": summary["frames_detected_by_reader"]}


def track_alone(config, prepare, LiveTracker, VideoSource) -> dict:
    """The session's frame loop over frames already in memory: tracking and recording, no decoding."""
    from toxrt.config import config_to_dict, to_toml
    from toxrt.io.layout import session_folder
    from toxrt.io.recording import SessionWriter
    from toxrt.sources.realtime import IterableSource
    from toxrt.stream.live_stream import LiveStream
    from toxrt.tracking import run_loop

    source = VideoSource(config.video_paths, config.frames_per_second, config.tracking_intervals)
    setup = prepare(config, source)
    frames = IterableSource(list(source), source.fps)
    writer = SessionWriter(session_folder(config), config.recording, {"name": "bench"},
                           to_toml(config_to_dict(config)), setup.background, setup.crop_size,
                           config.segmentation.histogram_bins, overwrite=True)
    stream = LiveStream(config.streaming, live=False)
    cpu = time.process_time()
    try:
        loop = run_loop(frames, LiveTracker(config, setup), writer, stream, False, None, None)
    finally:
        writer.close()  # the writer thread's work on these frames is tracking's too
        cpu = time.process_time() - cpu
    return {"frames": loop["frames"], "cpu_s_per_frame": cpu / loop["frames"], "fps_one_core": loop["fps"],
            "step_ms_p50": loop["step_ms_p50"]}


def where_decoding_goes(path: str, frames: int = 300) -> dict:
    """CPU ms per frame of each decoding step (median) and in all (mean), both grey paths, 1 and 2
    FFmpeg threads, on one core. Process CPU time, so FFmpeg's own threads count; with 2 threads
    FFmpeg decodes ahead in them, so only the total is meaningful there."""
    import cv2

    from toxrt.sources.decode import luma_table, open_video

    os.sched_setaffinity(0, {0})
    table = luma_table(path)
    result = {}
    for threads in (1, 2):
        for kind in ("bgr", "luma"):
            capture = open_video(path, threads, luma=kind == "luma")
            steps = np.zeros((frames, 3))
            count = 0
            started = time.process_time()
            for count in range(frames):
                t0 = time.process_time()
                if not capture.grab():
                    break
                t1 = time.process_time()
                _, image = capture.retrieve()
                t2 = time.process_time()
                if kind == "bgr":
                    cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
                elif table is not None:
                    cv2.LUT(image, table)
                steps[count] = (t1 - t0, t2 - t1, time.process_time() - t2)
            else:
                count = frames
            total = (time.process_time() - started) / max(count, 1)
            capture.release()
            grab, retrieve, grey = (1e3 * np.median(steps[:count], axis=0)).tolist()
            result[f"{kind}, {threads} FFmpeg thread{'s' if threads > 1 else ''}"] = {
                "decode": grab, "retrieve": retrieve, "to_grey": grey, "total": 1e3 * total}
    result["luma_usable"] = table is not None
    return result


def run_child(mode: str, params: str, frames: int, ffmpeg_threads: int, cv_threads: int, ahead: bool = True) -> dict:
    command = [sys.executable, __file__, "--child", mode, params, "--frames", str(frames),
               "--ffmpeg-threads", str(ffmpeg_threads), "--cv-threads", str(cv_threads)] + ([] if ahead else ["--no-ahead"])
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"{mode} on {params} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(params: str, frames: int, ffmpeg_threads: int, cv_threads: int, sweep: bool) -> dict:
    decode1 = run_child("decode", params, frames, ffmpeg_threads, cv_threads)
    decode2 = run_child("decode2", params, frames, ffmpeg_threads, cv_threads)
    track = run_child("track", params, frames, ffmpeg_threads, cv_threads)
    limit = 2.0 / (decode1["cpu_s_per_frame"] + track["cpu_s_per_frame"])
    target = min(limit, decode2["fps"])
    result = {"params": params, "frames": decode1["frames"], "decode_ms_per_frame": 1e3 * decode1["cpu_s_per_frame"],
              "track_ms_per_frame": 1e3 * track["cpu_s_per_frame"], "two_core_limit_fps": limit,
              "decode_alone_fps": decode2["fps"], "sessions": []}
    combos = [(ffmpeg_threads, cv_threads, True)]
    if sweep:
        combos = [(f, c, True) for f in (1, 2) for c in (1, 2)] + [(ffmpeg_threads, cv_threads, False)]
    for f, c, ahead in combos:
        session = run_child("session", params, frames, f, c, ahead)
        result["sessions"].append({"ffmpeg_threads": f, "cv_threads": c, "detect_in_reader": ahead, **session,
                                   "ratio": session["fps"] / target})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("params", nargs="*", help="parameter files of the videos to measure")
    parser.add_argument("--simulate", default=None, help="also a simulated H.264 video of this size, e.g. 1280x720")
    parser.add_argument("--animals", type=int, default=20)
    parser.add_argument("--frames", type=int, default=1500, help="frames of each video (from the start)")
    parser.add_argument("--ffmpeg-threads", type=int, default=None, help="default: toxrt.sources.decode.DECODE_THREADS")
    parser.add_argument("--cv-threads", type=int, default=0, help="cv2.setNumThreads (0: OpenCV's default)")
    parser.add_argument("--sweep", action="store_true",
                        help="sessions with 1 and 2 FFmpeg and OpenCV threads, and one without detection in the reader")
    parser.add_argument("--where", action="store_true", help="first, where decoding time goes (one core)")
    parser.add_argument("--no-ahead", action="store_true", help="the reader thread only decodes (no detection)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from toxrt.sources.decode import DECODE_THREADS

    ffmpeg_threads = args.ffmpeg_threads or DECODE_THREADS
    if args.child == "where":
        print(json.dumps(where_decoding_goes(args.params[0])))
        return
    if args.child:
        print(json.dumps(child(args.child, args.params[0], args.frames, ffmpeg_threads, args.cv_threads,
                               not args.no_ahead)))
        return
    params = list(args.params)
    if args.simulate:
        from sim_video import simulated_video

        width, height = map(int, args.simulate.split("x"))
        folder = Path(tempfile.gettempdir()) / f"toxrt_sim_{args.simulate}_{args.animals}_{args.frames}"
        params.append(str(simulated_video(folder, width, height, args.animals, args.frames)))
    print(f"load: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    results = []
    for path in params:
        if args.where:
            from toxrt.config import load_config

            video = load_config(path).video_paths[0]
            done = subprocess.run([sys.executable, __file__, "--child", "where", video], capture_output=True,
                                  text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
            where = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{video}: CPU ms per frame on one core (medians of decode, retrieve, to grey; mean total); "
                  f"luma path {'usable' if where.pop('luma_usable') else 'NOT usable (BGR is used)'}")
            for name, w in where.items():
                print(f"    {name:24s} decode {w['decode']:5.2f}, retrieve {w['retrieve']:5.2f}, to grey {w['to_grey']:5.2f}; "
                      f"total {w['total']:5.2f}")
        r = measure(path, args.frames, ffmpeg_threads, args.cv_threads, args.sweep)
        results.append(r)
        print(f"{path}: {r['frames']} frames; one core: decode {r['decode_ms_per_frame']:.2f} ms/frame, "
              f"track {r['track_ms_per_frame']:.2f} ms/frame -> two-core limit {r['two_core_limit_fps']:.0f} fps; "
              f"decode alone on two cores {r['decode_alone_fps']:.0f} fps", flush=True)
        for s in r["sessions"]:
            print(f"    session (FFmpeg threads {s['ffmpeg_threads']}, OpenCV threads {s['cv_threads'] or 'default'}, "
                  f"detection {'also in the reader' if s['detect_in_reader'] else 'in the main thread only'}): "
                  f"{s['fps']:.0f} fps = {100 * s['ratio']:.0f}% of the target; step p50 {s['step_ms_p50']:.2f} ms, "
                  f"p99 {s['step_ms_p99']:.2f} ms; {s['detected_by_reader']} of {s['frames']} frames detected "
                  f"by the reader", flush=True)
        print(f"    load now: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
