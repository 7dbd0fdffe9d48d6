"""Frame to subscriber: how long after a frame is captured its positions reach another process.

A simulated arena is pre-rendered into memory, then replayed in real time by ``RealtimeSource``
(as a camera would deliver it: each frame stamped with ``t_capture`` when it is released, the
newest frame winning when the engine is behind) through the session's own loop
(``session._run_loop``: ``LiveTracker.step``, publishing on ZeroMQ, recording the session).
A subscriber in a separate process stamps each ``pos`` message on arrival; the latency is its
receive time minus the message's ``t_capture``. Rendering and the end-of-session fusion are not
in the measured path.

    .venv/bin/python tools/bench_latency.py                       # 720p at 60/120/240 fps, 1080p at 60/120
    .venv/bin/python tools/bench_latency.py --size 720p --fps 120 --seconds 5

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
from toxrt.live_source import RealtimeSource  # noqa: E402
from toxrt.pipeline import LiveTracker, prepare  # noqa: E402
from toxrt.publish import TOPIC_POS  # noqa: E402
from toxrt.recording import SessionWriter  # noqa: E402
from toxrt.session_reader import load_session  # noqa: E402
from toxrt.session import _run_loop  # noqa: E402
from toxrt.source import SimulatedSource  # noqa: E402
from toxrt.streaming import LiveLink  # noqa: E402
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
        link = LiveLink(config.streaming)
        writer = SessionWriter(folder, config.recording, meta, to_toml(config_to_dict(config)), setup.background,
                               setup.crop_size, config.segmentation.histogram_bins, overwrite=True)
        peer = start_peer(peer_args, wait_ready)
        source = None
        try:
            if not link.publisher.wait_for_subscriber(TOPIC_POS, timeout_s=30):
                raise RuntimeError("the peer never subscribed")
            source = RealtimeSource(frames, fps, autostart=False)
            loop = _run_loop(source, LiveTracker(config, setup), writer, link, False, None, None)
        finally:
            if source is not None:
                source.close()
            link.close()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), action="append", help="default: 720p and 1080p")
    parser.add_argument("--fps", type=float, action="append", help="default: 60 120 240 (720p), 60 120 (1080p)")
    parser.add_argument("--animals", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each replay")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
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
