"""Frame to subscriber: how long after a frame is captured its positions reach another process.

A simulated arena is pre-rendered into memory, then replayed in real time by ``RealtimeSource``
(as a camera would deliver it: each frame stamped with ``t_capture`` when it is released, the
newest frame winning when the engine is behind) through the session's own loop
(``tracking.run_loop``: ``LiveTracker.step``, publishing on ZeroMQ, recording the session).
A subscriber in a separate process stamps each ``pos`` message on arrival; the latency is its
receive time minus the message's ``t_capture``. Rendering and the end-of-session fusion are not
in the measured path.

    .venv/bin/python tools/bench_latency.py                       # 720p at 60/120/240 fps, 1080p at 60/120
    .venv/bin/python tools/bench_latency.py --size 720p --fps 120 --seconds 5

With ``--video``, decoding is in the path: an encoded file is tracked by ``run_tracking`` itself with
``streaming.realtime = true`` (its reader thread decodes ahead, ``RealtimeSource`` releases each
frame at its time and stamps ``t_capture`` then, prepare and warm-up finish before the replay clock
starts), publishing to the subscriber process. ``--video sim`` makes simulated H.264 videos with 20
animals (``tools/sim_video.py``, cached in the temporary folder) at 720p and 1080p; a parameter file
(or a video with ``params.toml`` beside it) measures that video:

    .venv/bin/python tools/bench_latency.py --video sim                # 720p at 60/120/240, 1080p at 60/120
    .venv/bin/python tools/bench_latency.py --video FILE.toml --fps 120 --seconds 10

``run_live`` is also the harness of ``bench_realtime_max.py`` and ``bench_roundtrip.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toxrt.config import Config, build_config, config_to_dict, to_toml  # noqa: E402
from toxrt.sources.realtime import IterableSource, RealtimeSource  # noqa: E402
from toxrt.pipeline import LiveTracker, prepare  # noqa: E402
from toxrt.stream.wire import TOPIC_POS  # noqa: E402
from toxrt.io.recording import SessionWriter  # noqa: E402
from toxrt.io.session_reader import load_session  # noqa: E402
from toxrt.tracking import run_loop  # noqa: E402
from toxrt.sources.simulated import SimulatedSource  # noqa: E402
from toxrt.stream.live_stream import LiveStream  # noqa: E402
from toxrt.types import Frame  # noqa: E402

SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
WARMUP_FRAMES = 30  # stepped on a throw-away tracker first, so compilation and caches are not measured

# The subscriber process: records (seq, frame, t_capture, t_publish, t_receive) of every pos
# message until the stream has been idle for a second, then writes them to OUT as .npy.
SUBSCRIBER = r"""
import sys, time, numpy as np, zmq, msgpack
address, out = sys.argv[1], sys.argv[2]
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.RCVHWM, 0)
sub.setsockopt(zmq.SUBSCRIBE, b"pos")
sub.connect(address)
print("ready", flush=True)
rows, started = [], False
while sub.poll(1000 if started else 60000):
    topic, payload = sub.recv_multipart()
    t = time.time()
    m = msgpack.unpackb(payload)
    rows.append((m["seq"], m["frame"], m["t_capture"], m["t_publish"], t))
    started = True
np.save(out, np.array(rows, dtype=float).reshape(-1, 5))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def arena_config(width: int, height: int, animals: int, frames: int, fps: float, output_dir: str,
                 body_length_px: float = 28.0, marker_address: str = "") -> Config:
    """A config for the simulated arena with its own thresholds, publishing on a free port."""
    values = {
        "name": "bench", "video_paths": ["sim:bench"], "number_of_animals": animals, "output_dir": output_dir,
        "trajectories_formats": ["npy"],
        "sim": {"width": width, "height": height, "frames": frames, "fps": fps, "seed": 1,
                "body_length_px": body_length_px},
        "streaming": {"realtime": True, "publish_address": f"tcp://127.0.0.1:{free_port()}",
                      "marker_address": marker_address},
    }
    arena_source = SimulatedSource(build_config(values))
    return build_config({**values, **arena_source.arena.tracking_parameters()})


def render(config: Config) -> list[Frame]:
    """Every frame of the config's arena, in memory (uint8 H x W each)."""
    source = SimulatedSource(config)
    return [Frame(index, 0.0, image.copy()) for index, image in source.arena.frames()]


def start_peer(args: Sequence[str], wait_ready: bool = True) -> subprocess.Popen:
    """A Python peer process (``[-c, script, ...]`` or ``[path, ...]``); with ``wait_ready``, returns
    once it printed ready."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    peer = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    if not wait_ready:
        return peer
    line = peer.stdout.readline()
    if line.strip() != "ready":
        peer.kill()
        raise RuntimeError(f"peer did not start: {line!r} {peer.stderr.read()}")
    return peer


def run_live(config: Config, frames: list[Frame], fps: float, peer_args: Sequence[str],
             wait_ready: bool = True) -> dict:
    """Replay ``frames`` at ``fps`` through the session loop while ``peer_args`` runs alongside.

    The loop starts once the peer's subscription reached the publisher. Returns the loop's
    summary (frames, frames_dropped, step_ms_p50/p99, published, publish_dropped, markers...)
    plus the recorded session's ``events`` and the peer's ``peer_stdout`` / ``peer_stderr``.
    """
    setup = prepare(config, SimulatedSource(config))
    warm = LiveTracker(config, setup)
    for frame in frames[:WARMUP_FRAMES]:
        warm.step(frame)
    with tempfile.TemporaryDirectory(prefix="toxrt-bench-") as scratch:
        folder = Path(scratch) / "session_bench"
        meta = {"name": "bench", "video_paths": list(config.video_paths), "width": config.sim.width,
                "height": config.sim.height, "frames_per_second": fps, "number_of_animals": setup.number_of_animals,
                "body_length_px": setup.body_length_px, "single_animal_area": setup.single_animal_area,
                "max_distance_px": setup.max_distance_px}
        stream = LiveStream(config.streaming)
        writer = SessionWriter(folder, config.recording, meta, to_toml(config_to_dict(config)), setup.background,
                               setup.crop_size, config.segmentation.histogram_bins, overwrite=True)
        peer = start_peer(peer_args, wait_ready)
        source = None
        try:
            if not stream.publisher.wait_for_subscriber(TOPIC_POS, timeout_s=30):
                raise RuntimeError("the peer never subscribed")
            source = RealtimeSource(IterableSource(frames, fps), fps, autostart=False)
            loop = run_loop(source, LiveTracker(config, setup), writer, stream, False, None, None)
        finally:
            if source is not None:
                source.close()
            stream.close()
            writer.close()
        try:
            peer.wait(timeout=60)
        except subprocess.TimeoutExpired:
            peer.kill()
        loop["peer_stdout"], loop["peer_stderr"] = peer.stdout.read(), peer.stderr.read()
        loop["events"] = load_session(folder).events
    return loop


def measure(config: Config, frames: list[Frame], fps: float) -> dict:
    """One real-time run with a subscriber process; latency percentiles in ms."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "received.npy"
        loop = run_live(config, frames, fps, ["-c", SUBSCRIBER, config.streaming.publish_address, str(out)])
        rows = np.load(out) if out.exists() else np.zeros((0, 5))
    if rows.shape[0] == 0:
        raise RuntimeError(f"the subscriber received nothing: {loop['peer_stderr']}")
    latency = (rows[:, 4] - rows[:, 2]) * 1e3
    publish = (rows[:, 3] - rows[:, 2]) * 1e3
    p = np.percentile(latency, [50, 95, 99])
    seq = rows[:, 0]
    return {
        "fps": fps, "frames_replayed": len(frames), "frames_tracked": loop["frames"],
        "frames_dropped": loop["frames_dropped"], "received": int(rows.shape[0]),
        "missed": int(np.sum(np.diff(seq) - 1)) + int(seq[0]),
        "p50": p[0], "p95": p[1], "p99": p[2], "max": float(latency.max()),
        "capture_to_publish_p50": float(np.percentile(publish, 50)),
        "capture_to_publish_p99": float(np.percentile(publish, 99)),
        "step_ms_p50": loop["step_ms_p50"], "step_ms_p99": loop["step_ms_p99"],
        "publish_dropped": loop.get("publish_dropped", 0), "writer_stalls": loop["writer_stalls"],
    }


def sim_video_params(size: str, animals: int, frames: int) -> Path:
    sys.path.insert(0, str(ROOT / "tools"))
    from sim_video import simulated_video

    width, height = SIZES[size]
    folder = Path(tempfile.gettempdir()) / f"toxrt_latency_{size}_{animals}_{frames}"
    return simulated_video(folder, width, height, animals, frames, fps=120.0)


def video_params(video: str) -> Path:
    path = Path(video)
    params = path if path.suffix == ".toml" else path.parent / "params.toml"
    if not params.is_file():
        raise SystemExit(f"--video {video}: give a parameter file, or a video with params.toml beside it")
    return params


def measure_video(params: Path, fps: float, frames: int) -> dict:
    """``frames`` frames of the video replayed at ``fps`` through ``run_tracking``, a subscriber
    process receiving; latency percentiles in ms and where frames were lost."""
    from toxrt.config import load_config
    from toxrt.tracking import run_tracking

    with tempfile.TemporaryDirectory(prefix="toxrt-bench-") as scratch:
        out = Path(scratch) / "received.npy"
        address = f"tcp://127.0.0.1:{free_port()}"
        config = load_config(params, {
            "output_dir": scratch, "tracking_intervals": [[0, frames]], "frames_per_second": fps,
            "trajectories_formats": ["npy"],
            "streaming": {"realtime": True, "publish_address": address, "marker_address": "",
                          "wait_for_subscriber_s": 30.0}})
        peer = start_peer(["-c", SUBSCRIBER, address, str(out)])
        try:
            summary = run_tracking(config, progress=False, overwrite=True)
            peer.wait(timeout=120)
        finally:
            if peer.poll() is None:
                peer.kill()
        rows = np.load(out) if out.exists() else np.zeros((0, 5))
    if rows.shape[0] == 0:
        raise RuntimeError(f"the subscriber received nothing: {peer.stderr.read()}")
    latency = (rows[:, 4] - rows[:, 2]) * 1e3
    publish = (rows[:, 3] - rows[:, 2]) * 1e3
    p = np.percentile(latency, [50, 95, 99])
    lost = np.setdiff1d(np.arange(frames), rows[:, 1].astype(int))
    span = rows[-1, 2] - rows[0, 2]
    return {
        "fps": fps, "frames_replayed": frames, "frames_tracked": summary["frames"],
        "frames_dropped": summary["frames_dropped"], "received": int(rows.shape[0]),
        "lost_in_first_second": int(np.count_nonzero(lost < fps)), "first_lost": int(lost[0]) if lost.size else None,
        "replay_fps": (rows.shape[0] + lost.size - 1) / span if span > 0 else float("nan"),
        "p50": p[0], "p95": p[1], "p99": p[2], "max": float(latency.max()),
        "capture_to_publish_p50": float(np.percentile(publish, 50)),
        "capture_to_publish_p99": float(np.percentile(publish, 99)),
        "step_ms_p50": summary["step_ms_p50"], "step_ms_p99": summary["step_ms_p99"],
        "publish_dropped": summary.get("publish_dropped", 0), "writer_stalls": summary["writer_stalls"],
    }


def main_video(args) -> list[dict]:
    if args.video == "sim":
        plan = [(size, fps) for size in (args.size or ["720p", "1080p"])
                for fps in (args.fps or ([60.0, 120.0, 240.0] if size == "720p" else [60.0, 120.0]))]
        videos = {size: sim_video_params(size, args.animals, int(round(max(f for z, f in plan if z == size) * args.seconds)))
                  for size, _ in plan}
        plan = [(size, videos[size], fps) for size, fps in plan]
    else:
        params = video_params(args.video)
        plan = [(params.parent.name[-8:], params, fps) for fps in (args.fps or [60.0, 120.0, 240.0])]
    print(f"{'video':>8} {'fps':>5} {'tracked':>8} {'dropped':>8} {'received':>8} {'1st s':>5} {'replay':>7} "
          f"{'p50':>6} {'p95':>6} {'p99':>6} {'max':>7}  (ms, capture -> subscriber)  "
          f"{'pub p50':>7} {'pub p99':>7} {'step p50':>8} {'step p99':>8}")
    results = []
    for name, params, fps in plan:
        r = measure_video(params, fps, int(round(fps * args.seconds))) | {"video": str(params), "size": name}
        results.append(r)
        print(f"{name:>8} {fps:5.0f} {r['frames_tracked']:8d} {r['frames_dropped']:8d} {r['received']:8d} "
              f"{r['lost_in_first_second']:5d} {r['replay_fps']:7.1f} {r['p50']:6.2f} {r['p95']:6.2f} {r['p99']:6.2f} "
              f"{r['max']:7.2f}  {'':29}{r['capture_to_publish_p50']:7.2f} {r['capture_to_publish_p99']:7.2f} "
              f"{r['step_ms_p50']:8.2f} {r['step_ms_p99']:8.2f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), action="append", help="default: 720p and 1080p")
    parser.add_argument("--fps", type=float, action="append", help="default: 60 120 240 (720p), 60 120 (1080p)")
    parser.add_argument("--animals", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each replay (--video sim: 10 is usual)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--video", help="'sim' (simulated H.264 videos) or a parameter file / video: decoding in the path")
    args = parser.parse_args()
    if args.video:
        print(f"load: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
        results = main_video(args)
        print(f"load now: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return
    plan = {"720p": args.fps or [60.0, 120.0, 240.0], "1080p": args.fps or [60.0, 120.0]}
    results = []
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} cores")
    print(f"{'size':>6} {'fps':>5} {'tracked':>8} {'dropped':>8} {'received':>8} {'missed':>6} "
          f"{'p50':>6} {'p95':>6} {'p99':>6} {'max':>7}  (ms, capture -> subscriber)  "
          f"{'pub p50':>7} {'pub p99':>7} {'step p50':>8}")
    for size in args.size or ["720p", "1080p"]:
        for fps in plan[size]:
            width, height = SIZES[size]
            n = int(round(fps * args.seconds))
            with tempfile.TemporaryDirectory() as out_dir:
                config = arena_config(width, height, args.animals, n, fps, out_dir)
                frames = render(config)
                r = measure(config, frames, fps) | {"size": size}
            del frames
            results.append(r)
            print(f"{size:>6} {fps:5.0f} {r['frames_tracked']:8d} {r['frames_dropped']:8d} {r['received']:8d} "
                  f"{r['missed']:6d} {r['p50']:6.2f} {r['p95']:6.2f} {r['p99']:6.2f} {r['max']:7.2f}  "
                  f"{'':29}{r['capture_to_publish_p50']:7.2f} {r['capture_to_publish_p99']:7.2f} "
                  f"{r['step_ms_p50']:8.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
