"""Live sessions over real sockets on loopback: subscribers and stimulus programs in other processes.

Every peer here is a separate process (a Python subscriber, a closed-loop marker sender, ffmpeg,
``toxrt track``), talking to the session through ZeroMQ or UDP on 127.0.0.1 and free ports.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from toxrt.config import build_config, config_to_dict, load_config, to_toml
from toxrt.sources.realtime import IterableSource, RealtimeSource
from toxrt.sources.simulated import SimulatedSource
from toxrt.stream.wire import SCHEMA_VERSION
from toxrt.io.session_reader import load_session
from toxrt.tracking import run_tracking, summary_lines
from toxrt.stream.live_stream import STOP_MARKER
from toxrt.sim.arena import SimulatedArena
from toxrt.sim.writer import write_simulation

from .helpers import FakeClock, free_port

ROOT = Path(__file__).resolve().parents[1]
POS_KEYS = {"v", "frame", "seq", "t_capture", "t_publish", "n", "id", "fragment", "x", "y", "heading",
            "area", "status", "p"}

# The peer process. Modes:
#   collect ADDRESS             print every pos message (one JSON line each) until idle for IDLE_S
#   stall ADDRESS               connect with tiny queues and never read, until stdin closes
#   closed_loop ADDRESS MARKERS send a marker when the stream reaches each frame in PLAN, then stop
# It prints "ready" once connect() is called; the connection itself is made when the session binds.
PEER = r"""
import json, sys, time, zmq
from toxrt.stream.markers import MarkerSender
from toxrt.stream.wire import decode
mode, address = sys.argv[1], sys.argv[2]
context = zmq.Context()
sub = context.socket(zmq.SUB)
sub.setsockopt(zmq.RECONNECT_IVL, 10)  # the session binds after we connect: retry quickly
if mode == "stall":
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 4096)
sub.setsockopt(zmq.SUBSCRIBE, b"pos")
sub.connect(address)
print("ready", flush=True)
if mode == "stall":
    sys.stdin.read()
    sys.exit(0)
markers = MarkerSender(sys.argv[3]) if mode == "closed_loop" else None
plan = json.loads(sys.argv[4]) if mode == "closed_loop" else []  # [[frame, label], ...]
idle_s, got_first = 3.0, False
while sub.poll(int(idle_s * 1000) if got_first else 20000):
    topic, payload = sub.recv_multipart()
    t_receive = time.time()
    got_first = True
    message = decode(payload)
    message["t_receive"] = t_receive
    message["topic"] = topic.decode()
    print(json.dumps(message), flush=True)
    while plan and message["frame"] >= plan[0][0]:
        frame, label = plan.pop(0)
        markers.send(label, trigger_frame=message["frame"], t_capture=message["t_capture"])
if markers is not None:
    markers.close()
"""


class Peer:
    """A peer process running ``PEER``; ``ready`` is set once its subscriber is connecting (the
    session binds later and waits for the subscription: streaming.wait_for_subscriber_s)."""

    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-c", PEER, *args], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip() == "ready":
                self.ready.set()
            else:
                self.lines.append(line)

    def messages(self, timeout_s: float = 30.0) -> list[dict]:
        """Wait for the peer to end (it stops when the stream goes idle) and return what it got."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout_s)
        finally:
            self.stop()
        self._reader.join(timeout=5)
        assert self.process.returncode == 0, self.process.stderr.read()
        return [json.loads(line) for line in self.lines]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


def arena_config(tmp_path, frames: int, fps: float, animals: int = 8, width: int = 320, height: int = 240,
                 **streaming):
    pub = f"tcp://127.0.0.1:{free_port()}"
    markers = f"tcp://127.0.0.1:{free_port()}"
    values = {"name": "live", "video_paths": ["sim:live"], "number_of_animals": animals,
              "output_dir": str(tmp_path), "trajectories_formats": ["npy"],
              "sim": {"frames": frames, "seed": 7, "width": width, "height": height, "fps": fps, "body_length_px": 20},
              "streaming": {"realtime": True, "publish_address": pub, "marker_address": markers, **streaming}}
    arena = SimulatedArena(build_config(values).sim, animals)
    return build_config({**values, **arena.tracking_parameters()})


def recorder(gate: threading.Semaphore | None = None):
    """An on_frame hook recording (frame index, capture time, time the frame was done) per frame;
    it lets a lock-step replay (``gate``) release the next frame."""
    frames: list[tuple[int, float, float]] = []

    def on_frame(result):
        frames.append((result.frame_index, result.time_s, time.time()))
        if gate is not None:
            gate.release()

    return frames, on_frame


def lockstep_replay(config) -> tuple[RealtimeSource, threading.Semaphore]:
    """The arena replayed in real time on a fake clock that moves on by one frame only once the loop
    has finished the previous one (``gate``, released by the on_frame hook): no frame is dropped and
    no count depends on how fast the machine is. Capture times lie an hour back, before any
    publish time."""
    gate = threading.Semaphore(0)
    clock = FakeClock(time.time() - 3600.0, gate)
    inner = SimulatedSource(config)
    return RealtimeSource(inner, inner.fps, clock=clock.time, sleep=clock.sleep, autostart=False), gate


def test_a_replay_that_is_not_autostarted_waits_for_its_first_frame_to_be_asked_for():
    # What a session needs so that its setup (background, writer, sockets) costs no frame of a file.
    images = [np.full((4, 4), k, np.uint8) for k in range(5)]
    source = RealtimeSource(IterableSource(images), fps=2.0, autostart=False)
    running = RealtimeSource(IterableSource(images), fps=2.0)
    try:
        assert not source.started and source.grabbed == 0 and running.started
        first = source.next_frame(timeout_s=5)
        assert source.started and first is not None and first.index == 0 and int(first.image[0, 0]) == 0
    finally:
        source.close()
        running.close()


@pytest.mark.slow
def test_subscriber_in_another_process_receives_every_position_in_order(tmp_path):
    config = arena_config(tmp_path, frames=100, fps=50.0, wait_for_subscriber_s=20.0)
    peer = Peer("collect", config.streaming.publish_address)
    source, gate = lockstep_replay(config)
    try:
        assert peer.ready.wait(20)
        tracked, on_frame = recorder(gate)
        summary = run_tracking(config, progress=False, overwrite=True, on_frame=on_frame, source=source)
        messages = peer.messages()
    finally:
        peer.stop()
    assert summary["frames"] == len(tracked) == 100 and summary["frames_dropped"] == 0
    assert [m["topic"] for m in messages] == ["pos"] * len(tracked)
    # Every tracked frame's message, in order, none missing: seq counts from 0, frames as tracked.
    assert [m["seq"] for m in messages] == list(range(len(tracked)))
    assert [m["frame"] for m in messages] == [f for f, _, _ in tracked]
    frames = np.array([m["frame"] for m in messages])
    assert np.all(np.diff(frames) >= 1)
    for m, (_, t_capture, _) in zip(messages, tracked):
        assert set(m) - {"t_receive", "topic"} == POS_KEYS and m["v"] == SCHEMA_VERSION
        assert m["t_capture"] == pytest.approx(t_capture, abs=1e-6)  # the replay's capture time
        assert m["t_capture"] <= m["t_publish"] <= m["t_receive"]
        n = m["n"]
        assert all(len(m[k]) == n for k in ("id", "fragment", "x", "y", "heading", "area", "status", "p"))
        # An identity names one animal: it appears once per message at most.
        identified = [i for i in m["id"] if i > 0]
        assert len(identified) == len(set(identified)) and set(identified) <= set(range(1, 9))
        assert set(m["status"]) <= {0, 1, 2}
        assert all(0 <= x < 320 for x in m["x"]) and all(0 <= y < 240 for y in m["y"])
    # Identities are decided live and reach the subscriber.
    last = messages[-1]
    assert sorted(i for i in last["id"] if i > 0) == list(range(1, 9))


@pytest.mark.slow
def test_a_subscriber_that_never_reads_does_not_stop_the_engine(tmp_path):
    """A stalled subscriber makes the engine wait for nothing: a lock-step replay (which moves on only
    once the loop has finished a frame, so a publisher that waited would hang the run) is tracked to
    its end, and the publisher counts the congestion instead. How long frames take with and without
    such a subscriber is measured by tools/bench_publish.py and tools/bench_kill.py."""
    # Over an ipc:// socket: loopback TCP buffers absorb about 3 MB before the high-water mark is
    # reached, a Unix socket's about 200 KB, so that a short run overflows the stalled queue.
    address = f"ipc://{tmp_path}/pub.sock"
    config = arena_config(tmp_path, frames=200, fps=100.0, animals=20, width=480, height=360,
                          publish_address=address, publish_format="json", publish_hwm=2, wait_for_subscriber_s=20.0)
    peer = Peer("stall", address)
    source, gate = lockstep_replay(config)
    try:
        assert peer.ready.wait(20)
        tracked, on_frame = recorder(gate)
        summary = run_tracking(config, progress=False, overwrite=True, on_frame=on_frame, source=source)
    finally:
        peer.stop()
    assert summary["frames"] == len(tracked) == 200 and summary["frames_dropped"] == 0
    assert summary["publish_dropped"] > 0  # counted, not waited for
    assert load_session(summary["session"]).n_frames == 200


@pytest.mark.slow
def test_markers_from_a_stimulus_process_are_recorded_and_a_stop_marker_ends_the_run(tmp_path):
    config = arena_config(tmp_path, frames=500, fps=50.0, wait_for_subscriber_s=20.0)
    plan = [[10, "stimulus_on"], [20, "stimulus_off"], [30, STOP_MARKER]]
    peer = Peer("closed_loop", config.streaming.publish_address, config.streaming.marker_address, json.dumps(plan))
    try:
        assert peer.ready.wait(20)
        tracked, on_frame = recorder()
        summary = run_tracking(config, progress=False, overwrite=True, on_frame=on_frame)
        peer.messages()
    finally:
        peer.stop()
    assert summary["interrupted"] and summary["frames"] < 500  # the stop marker ended the replay early
    assert summary["markers_received"] == 3 and summary["markers_rejected"] == 0
    session = load_session(summary["session"])
    assert session.meta["complete"]
    trajectories = np.load(Path(summary["session"]) / "trajectories" / "trajectories.npy", allow_pickle=True).item()
    assert trajectories["trajectories"].shape[1:] == (8, 2) and len(trajectories["trajectories"]) > tracked[-1][0]
    markers = [e for e in session.events if e["type"] == "marker"]
    assert [m["label"] for m in markers] == [label for _, label in plan]
    done = {f: t for f, _, t in tracked}
    order = [f for f, _, _ in tracked]
    for marker, (planned, _) in zip(markers, plan):
        trigger, frame = marker["payload"]["trigger_frame"], marker["frame"]
        # Sent after the peer saw the trigger frame: recorded at it (the marker came back before
        # that frame's turn ended) or later.
        assert trigger >= planned and frame >= trigger
        # Recorded at the frame being tracked when it arrived: after the previous frame was captured,
        # before this frame was done.
        previous = order[order.index(frame) - 1]
        assert tracked[order.index(previous)][1] <= marker["t_arrival"] <= done[frame]
        assert marker["t_sent"] <= marker["t_arrival"]
    assert tracked[-1][0] == markers[-1]["frame"]  # the stop marker's frame is the last one tracked


# ---------------------------------------------------------------------------------------------
# A real streaming peer: ffmpeg sending MPEG-TS over UDP
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def simulated_video(tmp_path_factory):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    folder = tmp_path_factory.mktemp("udp_arena")
    sim = build_config({"sim": {"frames": 100, "seed": 11, "width": 320, "height": 240, "fps": 50,
                                "body_length_px": 20}}).sim
    return write_simulation(folder, sim, 4)


def ffmpeg_udp(video: Path, port: int) -> subprocess.Popen:
    """Stream ``video`` in a loop at its frame rate to udp://127.0.0.1:port (MPEG-4 in MPEG-TS)."""
    return subprocess.Popen(
        ["ffmpeg", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1", "-i", str(video),
         "-c:v", "mpeg4", "-q:v", "3", "-g", "10", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def udp_config(paths: dict, port: int, tmp_path: Path):
    config = load_config(paths["params"])
    values = config_to_dict(config)
    values.update(video_paths=[f"udp://127.0.0.1:{port}"], output_dir=str(tmp_path), name="udp",
                  trajectories_formats=["npy"], frames_per_second=50.0)
    values["streaming"] = {"publish_address": f"tcp://127.0.0.1:{free_port()}",
                           "marker_address": f"tcp://127.0.0.1:{free_port()}", "source_timeout_s": 1.0}
    return build_config(values)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_udp_stream_from_ffmpeg_is_tracked_live(simulated_video, tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    config = udp_config(simulated_video, port, tmp_path)
    streamer = ffmpeg_udp(simulated_video["video"], port)
    peer = Peer("collect", config.streaming.publish_address)
    finished = threading.Event()
    tracked = []

    def on_frame(result):
        tracked.append(result)
        if len(tracked) >= 40:
            finished.set()

    try:
        assert peer.ready.wait(20)
        summary = run_tracking(config, progress=False, overwrite=True, stop=finished, on_frame=on_frame)
        received = peer.messages()
    finally:
        stop(streamer)
        peer.stop()
    assert summary["frames"] == 40 and summary["interrupted"]
    assert (summary["number_of_animals"], summary["fragments"] > 0) == (4, True)
    assert summary["individual_blobs_per_frame"] > 2.5  # the animals are found in the decoded stream
    assert Path(summary["session"], "trajectories", "trajectories.npy").is_file()
    # Live capture times: UNIX seconds at grab, increasing.
    times = np.array([r.time_s for r in tracked])
    assert np.all(np.diff(times) > 0) and abs(times[-1] - time.time()) < 60
    # Another process received identified positions while the stream was tracked.
    assert received and any(i > 0 for m in received for i in m["id"])


@pytest.mark.slow
def test_a_udp_stream_that_stops_and_restarts_is_reconnected(simulated_video, tmp_path):
    port = free_port(socket.SOCK_DGRAM)
    config = udp_config(simulated_video, port, tmp_path)
    streamers = [ffmpeg_udp(simulated_video["video"], port)]
    finished = threading.Event()
    state = {"count": 0, "restarted_at": None}

    def restart() -> None:
        time.sleep(1.5)  # longer than source_timeout_s: the session must notice the loss
        state["restarted_at"] = time.time()
        streamers.append(ffmpeg_udp(simulated_video["video"], port))

    def on_frame(result):
        state["count"] += 1
        if state["count"] == 20:
            stop(streamers[0])
            threading.Thread(target=restart, daemon=True).start()
        restarted = state["restarted_at"]
        if restarted is not None and result.time_s > restarted:
            state["after"] = state.get("after", 0) + 1
            if state["after"] >= 20:
                finished.set()

    try:
        summary = run_tracking(config, progress=False, overwrite=True, stop=finished, on_frame=on_frame)
    finally:
        for streamer in streamers:
            stop(streamer)
    assert state.get("after", 0) >= 20  # frames of the second stream were tracked
    events = load_session(summary["session"]).events
    kinds = [e["type"] for e in events if e["type"] in ("source_lost", "source_regained")]
    assert kinds[:2] == ["source_lost", "source_regained"]
    regained = next(e for e in events if e["type"] == "source_regained")
    assert regained["down_s"] > 0 and regained["source"] == f"udp://127.0.0.1:{port}"
    assert Path(summary["session"], "trajectories", "trajectories.npy").is_file()


# ---------------------------------------------------------------------------------------------
# toxrt track as a program
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_toxrt_track_stops_cleanly_on_sigterm(tmp_path):
    config = arena_config(tmp_path, frames=30000, fps=50.0)  # ten minutes: it must be stopped
    params = tmp_path / "params.toml"
    params.write_text(to_toml(config_to_dict(config)))
    peer = Peer("collect", config.streaming.publish_address)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    track = subprocess.Popen([sys.executable, "-m", "toxrt", "track", "--load", str(params), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert peer.ready.wait(20)
        deadline = time.monotonic() + 30
        while len(peer.lines) < 10 and time.monotonic() < deadline and track.poll() is None:
            time.sleep(0.05)  # tracking (and publishing) is under way
        assert len(peer.lines) >= 10, track.stderr.read() if track.poll() is not None else "no positions"
        track.send_signal(signal.SIGTERM)
        out, err = track.communicate(timeout=60)
    finally:
        stop(track)
        peer.stop()
    assert track.returncode == 0, err
    assert "stopping; finishing the session" in err
    session_dir = tmp_path / "session_live"
    meta = json.loads((session_dir / "session.json").read_text())
    assert meta["complete"] and meta["summary"]["interrupted"]
    assert 10 <= meta["summary"]["frames"] < 30000
    assert (session_dir / "trajectories" / "trajectories.npy").is_file()
    assert str(session_dir / "trajectories") in out


HOSTILE_SENDER = r"""
import sys, time, msgpack, zmq
address = sys.argv[1]
context = zmq.Context()
push = context.socket(zmq.PUSH)
push.setsockopt(zmq.LINGER, 30000)
push.connect(address)
hostile = [
    msgpack.packb({"label": "bin", "payload": {"raw": b"\x00\x01"}}, use_bin_type=True),
    msgpack.packb({"label": "ts", "payload": {"when": msgpack.Timestamp(1700000000, 0)}}),
    b'{"label": "deep", "payload": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    b"{" + b" " * (10 * 1024 * 1024) + b"}",
]
for payload in hostile:
    push.send(payload)
push.send(msgpack.packb({"label": "after", "t_sent": time.time(), "payload": {"n": 1}}))
time.sleep(1.0)
push.send(msgpack.packb({"label": "toxrt.stop", "t_sent": time.time()}))
push.close()
context.term()  # waits (up to the linger) until everything queued has left; exiting would drop it
"""


def test_hostile_markers_are_counted_and_the_session_and_its_marker_channel_go_on(tmp_path):
    config = arena_config(tmp_path, frames=3000, fps=50.0, animals=4)  # a minute: only a marker ends it
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sender = subprocess.Popen([sys.executable, "-c", HOSTILE_SENDER, config.streaming.marker_address], env=env)
    try:
        summary = run_tracking(config, progress=False, overwrite=True)
        sender.wait(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
    assert summary["interrupted"] and summary["frames"] < 3000  # the stop marker still got through
    assert summary["markers_rejected"] == 4 and summary["markers_too_large"] == 1
    assert summary["markers_received"] == 2
    session = load_session(summary["session"])
    assert session.meta["complete"]
    assert [e["label"] for e in session.events if e["type"] == "marker"] == ["after", STOP_MARKER]
    assert (Path(summary["session"]) / "trajectories" / "trajectories.npy").is_file()
    assert any("4 markers rejected (1 too large" in line for line in summary_lines(summary))


def test_the_flush_lag_reaches_status_messages_and_the_summary():
    from toxrt.stream.client import PositionClient
    from toxrt.config import StreamingConfig
    from toxrt.io.recording import WriterStats
    from toxrt.tracking import summary_lines
    from toxrt.stream.live_stream import LiveStream

    link = LiveStream(StreamingConfig(publish_address=f"tcp://127.0.0.1:{free_port()}", marker_address=""))
    try:
        with PositionClient(link.publisher.address) as client:
            assert link.publisher.wait_for_subscriber(b"status", timeout_s=10)
            link.report_recording(WriterStats(flush_lag_s=1.25, max_flush_lag_s=2.5, slow_flushes=3))
            link.publisher.publish_status()
            deadline = time.monotonic() + 10
            while client.status is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert client.status["flush_lag_s"] == 1.25 and client.status["flush_lag_max_s"] == 2.5
    finally:
        link.close()
    lines = summary_lines({"writer_slow_flushes": 3, "writer_flush_lag_max_s": 2.5, "flush_interval_s": 0.5})
    assert any("slow disk" in line and "up to 3.0 s" in line for line in lines)
