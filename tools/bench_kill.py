"""Hostile-conditions figures: tracking lost to ``kill -9`` (normal and slowed disk), markers counted.

Kill trials: a child process runs a live session on the simulated arena replayed in real time and
prints each frame index as it is tracked; the parent kills it (SIGKILL) at a random moment, loads
the session folder and counts the frames tracked but not on disk. ``--slow-disk W`` makes every
chunk write of the child's session writer take W more seconds (a network share, a busy USB disk).
The child's "slow disk" warnings give the flush lag the writer measured.

Marker burst: a session runs while a stimulus process sends N valid markers, then hostile ones
(msgpack bin and Timestamp values, JSON nested 5,000 deep, 10 MB messages), then the stop marker;
printed: markers recorded in events.jsonl, the session's counters and the log lines they cost.

Stalled subscriber: a subscriber that stops reading while ``--stall`` frames are published; printed:
the publisher's ``dropped`` (congestion episodes) against the positions the subscriber really lost
(its gaps in ``seq``) and received.

    .venv/bin/python tools/bench_kill.py --trials 10 --slow-disk 1.5
    .venv/bin/python tools/bench_kill.py --markers 10000 --trials 0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FPS = 50.0

CHILD = r"""
import sys, time
from toxrt.io import recording
from toxrt.config import load_config
from toxrt.tracking import run_tracking

slow = float(sys.argv[2])
if slow > 0:
    real_write_chunk = recording.SessionWriter._write_chunk
    def slow_write_chunk(self, frames):
        time.sleep(slow)
        real_write_chunk(self, frames)
    recording.SessionWriter._write_chunk = slow_write_chunk
run_tracking(load_config(sys.argv[1]), progress=False, overwrite=True,
            on_frame=lambda result: print(result.frame_index, flush=True))
"""

MARKERS = r"""
import sys, time, msgpack, zmq
address, count = sys.argv[1], int(sys.argv[2])
context = zmq.Context()
push = context.socket(zmq.PUSH)
push.setsockopt(zmq.LINGER, 60000)
push.setsockopt(zmq.SNDHWM, 0)
push.connect(address)
time.sleep(2.0)  # the session is tracking
for k in range(count):
    push.send(msgpack.packb({"label": "tick", "t_sent": time.time(), "payload": {"k": k}}))
hostile = [msgpack.packb({"label": "bin", "payload": {"raw": b"\x00"}}, use_bin_type=True),
           msgpack.packb({"label": "ts", "payload": {"t": msgpack.Timestamp(1, 0)}}),
           b'{"label": "deep", "payload": ' + b"[" * 5000 + b"]" * 5000 + b"}",
           b"{" + b" " * (10 * 1024 * 1024) + b"}"] * 5 + [b"\xc1"]
for payload in hostile:
    push.send(payload)
time.sleep(1.0)
push.send(msgpack.packb({"label": "toxrt.stop"}))
push.close()
context.term()  # waits (up to the linger) until everything queued has left; exiting would drop it
"""


def write_params(folder: Path, frames: int, flush_interval_s: float, marker_address: str = "") -> Path:
    from toxrt.config import build_config, config_to_dict, to_toml
    from toxrt.sim.arena import SimulatedArena

    values = {"name": "bench", "video_paths": ["sim:bench"], "number_of_animals": 4, "output_dir": str(folder),
              "trajectories_formats": ["npy"],
              "sim": {"frames": frames, "seed": 3, "width": 320, "height": 240, "fps": FPS, "body_length_px": 20},
              "streaming": {"realtime": True, "publish_address": "", "marker_address": marker_address},
              "recording": {"flush_interval_s": flush_interval_s}}
    arena = SimulatedArena(build_config(values).sim, 4)
    path = folder / "params.toml"
    path.write_text(to_toml(config_to_dict(build_config({**values, **arena.tracking_parameters()}))))
    return path


def kill_trial(folder: Path, slow_s: float, flush_interval_s: float, rng: np.random.Generator) -> dict:
    from toxrt.io.session_reader import load_session

    params = write_params(folder, frames=30000, flush_interval_s=flush_interval_s)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(params), str(slow_s)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    kill_after = float(rng.uniform(3.0, 6.0))  # seconds of tracking
    last = -1
    for line in child.stdout:
        last = int(line)
        if last >= kill_after * FPS:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    stderr = child.stderr.read()
    session = load_session(folder / "session_bench")
    lost = last + 1 - session.n_frames
    bounds = [float(x) for x in re.findall(r"would lose up to ([0-9.]+) s", stderr)]
    return {"tracked": last + 1, "on_disk": session.n_frames, "lost_frames": lost, "lost_s": lost / FPS,
            "warned_bound_s": max(bounds) if bounds else None}


def marker_burst(folder: Path, count: int) -> dict:
    from toxrt.io.session_reader import load_session

    port = _free_port()
    params = write_params(folder, frames=30000, flush_interval_s=0.5, marker_address=f"tcp://127.0.0.1:{port}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sender = subprocess.Popen([sys.executable, "-c", MARKERS, f"tcp://127.0.0.1:{port}", str(count)], env=env)
    track = subprocess.run([sys.executable, "-m", "toxrt", "track", "--load", str(params), "--quiet", "--overwrite"],
                           capture_output=True, text=True, env=env, timeout=600)
    sender.wait(timeout=120)
    session = load_session(folder / "session_bench")
    summary = session.meta.get("summary", {})
    markers = [e for e in session.events if e.get("type") == "marker"]
    return {"exit": track.returncode, "recorded": len(markers), "received": summary.get("markers_received"),
            "rejected": summary.get("markers_rejected"), "too_large": summary.get("markers_too_large"),
            "log_lines": sum(1 for line in track.stderr.splitlines() if "toxrt.stream.markers" in line),
            "stopped_by_marker": bool(summary.get("interrupted")), "complete": session.meta.get("complete")}


def stalled_subscriber(total: int) -> dict:
    import zmq

    from toxrt.stream.client import SeqCounter
    from toxrt.stream.publish import Publisher
    from toxrt.stream.wire import decode

    arrays = {"ids": np.arange(1, 21), "x": np.ones(20), "y": np.ones(20), "heading": np.zeros(20),
              "area": np.ones(20), "status": np.zeros(20, np.uint8), "p": np.ones(20), "fragment": np.arange(20)}
    with Publisher("tcp://127.0.0.1:*") as publisher:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"pos")
        sub.connect(publisher.address)
        publisher.wait_for_subscriber(b"pos")
        for frame in range(total - 1):  # nobody reads meanwhile
            publisher.publish_positions(frame, 0.0, **arrays)
        counter, received = SeqCounter(), 0
        while sub.poll(500):
            counter.see(decode(sub.recv_multipart()[1])["seq"])
            received += 1
        publisher.publish_positions(total - 1, 0.0, **arrays)
        if sub.poll(5000):
            counter.see(decode(sub.recv_multipart()[1])["seq"])
            received += 1
        sub.close(linger=0)
    return {"published": total, "publisher_dropped": publisher.dropped, "subscriber_lost_seq_gaps": counter.missed,
            "subscriber_received": received}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="kill trials per disk speed")
    parser.add_argument("--slow-disk", type=float, default=1.5, help="extra seconds per chunk write (0: skip)")
    parser.add_argument("--flush-interval", type=float, default=0.5)
    parser.add_argument("--markers", type=int, default=10000, help="valid markers in the burst (0: skip)")
    parser.add_argument("--stall", type=int, default=3000, help="frames published to a stalled subscriber (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f} at start")
    speeds = [0.0] + ([args.slow_disk] if args.slow_disk > 0 else [])
    for slow in speeds:
        if args.trials <= 0:
            break
        trials = []
        for _ in range(args.trials):
            with tempfile.TemporaryDirectory() as tmp:
                trials.append(kill_trial(Path(tmp), slow, args.flush_interval, rng))
        lost = np.array([t["lost_s"] for t in trials])
        warned = [t["warned_bound_s"] for t in trials if t["warned_bound_s"] is not None]
        print(f"kill -9, chunk writes +{slow:.1f} s, flush_interval_s {args.flush_interval}: {len(trials)} trials, "
              f"lost {lost.min():.2f}-{lost.max():.2f} s (mean {lost.mean():.2f}); "
              f"writer's warned bound up to {max(warned):.2f} s" if warned else
              f"kill -9, chunk writes +{slow:.1f} s, flush_interval_s {args.flush_interval}: {len(trials)} trials, "
              f"lost {lost.min():.2f}-{lost.max():.2f} s (mean {lost.mean():.2f}); no slow-disk warning")
        print("  " + json.dumps(trials))
    if args.markers > 0:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"marker burst of {args.markers} valid + 21 hostile, then toxrt.stop: "
                  + json.dumps(marker_burst(Path(tmp), args.markers)))
    if args.stall > 0:
        print(f"stalled subscriber, default publish_hwm: {json.dumps(stalled_subscriber(args.stall))}")
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
