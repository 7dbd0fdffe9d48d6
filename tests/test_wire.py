"""What goes over the wire is what docs/streaming.md says, and every client can parse it.

One real-time session on the simulated arena publishes JSON; two subscribers in other processes
receive it: a Python one parsing with a strict parser (NaN, Infinity rejected, as JavaScript, C# and
MATLAB do) and, when Node.js is installed (tools/install_system_deps.sh), a JavaScript one using
Node's zeromq package and ``JSON.parse``. A stimulus marker sent during the run must come back on the
``event`` topic. Also: the default ``streaming.publish = "auto"`` binds nothing when a file is
tracked at full speed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from toxrt.config import build_config
from toxrt.errors import ToxrtError
from toxrt.stream.markers import MarkerSender
from toxrt.tracking import run_tracking
from toxrt.io.session_reader import load_session
from toxrt.sim.arena import SimulatedArena

from .helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "tests" / "clients"
POS_KEYS = {"v", "frame", "seq", "t_capture", "t_publish", "n", "id", "fragment", "x", "y", "heading",
            "area", "status", "p"}
ARRAYS = ("id", "fragment", "x", "y", "heading", "area", "status", "p")
STATUS_KEYS = {"v", "t_publish", "fps", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "frames",
               "published", "dropped_publish", "dropped_source", "animals", "identity_confidence",
               "subscriptions"}

# A Python subscriber with a strict JSON parser; same output as tests/clients/subscriber.mjs.
STRICT_PEER = r"""
import json, sys, time, zmq
def reject(constant):
    raise ValueError("not strict JSON: " + constant)
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.RECONNECT_IVL, 10)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sys.argv[1])
print("ready", flush=True)
started = False
while sub.poll(3000 if started else 30000):
    topic, payload = sub.recv_multipart()
    t_receive = time.time()
    started = True
    try:
        message = json.loads(payload.decode("utf-8"), parse_constant=reject)
    except ValueError as exc:
        print(f"rejected a {topic!r} payload: {exc}: {payload[:200]!r}", file=sys.stderr)
        sys.exit(3)
    print(json.dumps({"topic": topic.decode(), "message": message, "t_receive": t_receive}), flush=True)
"""


def node_client_available() -> bool:
    return shutil.which("node") is not None and (CLIENTS / "node_modules" / "zeromq").is_dir()


class Subscriber:
    """A subscriber process printing one JSON line per message; ``ready`` once it connects."""

    def __init__(self, command: list[str]):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=env, cwd=CLIENTS)
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

    def received(self, timeout_s: float = 60.0) -> list[dict]:
        try:
            self.process.wait(timeout=timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        assert self.process.returncode == 0, self.process.stderr.read()
        return [json.loads(line) for line in self.lines]


def realtime_config(tmp_path: Path, frames: int = 150, fps: float = 50.0):
    values = {"name": "wire", "video_paths": ["sim:wire"], "number_of_animals": 8, "output_dir": str(tmp_path),
              "trajectories_formats": ["npy"],
              # Animals that leave the region of interest lose their blob: predicted rows.
              "roi_list": ["+ Rectangle [[0, 0], [200, 239]]"],
              "sim": {"frames": frames, "seed": 3, "width": 320, "height": 240, "fps": fps, "body_length_px": 20},
              "streaming": {"realtime": True, "publish_format": "json", "wait_for_subscriber_s": 20.0,
                            "publish_address": f"tcp://127.0.0.1:{free_port()}",
                            "marker_address": f"tcp://127.0.0.1:{free_port()}"}}
    arena = SimulatedArena(build_config(values).sim, 8)
    return build_config({**values, **arena.tracking_parameters()})


@pytest.fixture(scope="module")
def json_session(tmp_path_factory):
    """One real-time JSON session with a strict Python subscriber, a Node one if installed, and a
    marker sent while it runs; returns (summary, {client: messages})."""
    tmp_path = tmp_path_factory.mktemp("wire")
    config = realtime_config(tmp_path)
    address = config.streaming.publish_address
    clients = {"python": Subscriber([sys.executable, "-c", STRICT_PEER, address])}
    if node_client_available():
        clients["node"] = Subscriber(["node", str(CLIENTS / "subscriber.mjs"), address])
    sender = MarkerSender(config.streaming.marker_address)

    sent = []

    def on_frame(result):
        if result.frame_index >= 20 and not sent:  # frame 20 itself may be dropped in real time
            sender.send("stimulus_on", zone=2)
            sent.append(result.frame_index)

    try:
        assert all(c.ready.wait(30) for c in clients.values())
        time.sleep(0.2)  # both are connecting; the session waits for the first subscription
        summary = run_tracking(config, progress=False, overwrite=True, on_frame=on_frame)
        received = {name: client.received() for name, client in clients.items()}
    finally:
        sender.close()
        for client in clients.values():
            if client.process.poll() is None:
                client.process.kill()
    return summary, received


def check_stream(messages: list[dict], summary: dict) -> None:
    """The documented schema, message by message."""
    by_topic = {t: [m["message"] for m in messages if m["topic"] == t] for t in ("pos", "event", "status")}
    assert set(m["topic"] for m in messages) <= set(by_topic)
    positions = by_topic["pos"]
    assert len(positions) >= 0.9 * summary["frames"]
    seqs = [m["seq"] for m in positions]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing lost once connected
    for m in positions:
        assert set(m) == POS_KEYS and m["v"] == 1
        # n counts rows: individual blobs, crossing members, predicted positions.
        assert all(len(m[k]) == m["n"] for k in ARRAYS)
        for status, heading, area in zip(m["status"], m["heading"], m["area"]):
            assert status in (0, 1, 2, 3)
            if status == 1:  # predicted: no blob, so no heading (null) and area 0
                assert heading is None and area == 0
            else:
                assert isinstance(heading, float) and area > 0
        # A crossing blob is repeated once per member: same position, distinct identities.
        crossing = {}
        for i, x, y, s in zip(m["id"], m["x"], m["y"], m["status"]):
            if s == 2:
                crossing.setdefault((x, y), []).append(i)
        for ids in crossing.values():
            named = [i for i in ids if i > 0]
            assert len(named) == len(set(named))
    assert any(1 in m["status"] for m in positions)  # predicted rows were checked above
    for m in by_topic["status"]:
        assert STATUS_KEYS <= set(m)
    events = by_topic["event"]
    assert {"identity", "fragment_start", "marker"} <= {e["type"] for e in events}
    for e in events:
        assert "frame" in e and "frame_index" not in e and e["v"] == 1
    marker = next(e for e in events if e["type"] == "marker")
    assert marker["label"] == "stimulus_on" and marker["payload"] == {"zone": 2} and marker["frame"] >= 20


@pytest.mark.slow
def test_strict_json_subscriber_receives_the_documented_stream(json_session):
    summary, received = json_session
    messages = received["python"]
    check_stream(messages, summary)
    # The events on the wire are the events recorded in events.jsonl, under the same names.
    recorded = load_session(summary["session"]).events
    assert all("frame_index" not in e for e in recorded)
    key = lambda e: (e["type"], e["frame"], e.get("fragment"), e.get("new_identity"), e.get("label"))  # noqa: E731
    on_wire = {key(m["message"]) for m in messages if m["topic"] == "event"}
    in_file = {key(e) for e in recorded if e["type"] in ("identity", "fragment_start", "marker")}
    assert in_file and in_file <= on_wire


@pytest.mark.slow
def test_node_subscriber_parses_every_message_with_json_parse(json_session):
    if not node_client_available():
        pytest.skip("Node.js or its zeromq package is missing: run tools/install_system_deps.sh")
    summary, received = json_session
    check_stream(received["node"], summary)
    python_frames = [m["message"]["frame"] for m in received["python"] if m["topic"] == "pos"]
    node_frames = [m["message"]["frame"] for m in received["node"] if m["topic"] == "pos"]
    assert node_frames == python_frames[len(python_frames) - len(node_frames):]


@pytest.mark.slow
def test_tracking_a_file_binds_no_port_unless_asked(tmp_path):
    # Hold the default addresses, as another program or a second toxrt run would.
    context = zmq.Context.instance()
    held = []
    for port in (5556, 5557):
        probe = context.socket(zmq.PUB)
        probe.setsockopt(zmq.LINGER, 0)
        try:
            probe.bind(f"tcp://127.0.0.1:{port}")
        except zmq.ZMQError:
            probe.close()  # already held by another program: just as good
        else:
            held.append(probe)
    try:
        values = {"name": "file", "video_paths": ["sim:file"], "number_of_animals": 4, "output_dir": str(tmp_path),
                  "trajectories_formats": ["npy"], "sim": {"frames": 30, "seed": 1, "width": 200, "height": 160}}
        arena = SimulatedArena(build_config(values).sim, 4)
        config = build_config({**values, **arena.tracking_parameters()})
        summary = run_tracking(config, progress=False, overwrite=True)
        assert summary["frames"] == 30 and "publish_address" not in summary
        assert "publish_address" not in json.loads((Path(summary["session"]) / "session.json").read_text())
        asked = build_config({**values, **arena.tracking_parameters(), "streaming": {"publish": "on"}})
        with pytest.raises(ToxrtError, match="port already in use"):
            run_tracking(asked, progress=False, overwrite=True)
        picked = build_config({**values, **arena.tracking_parameters(),
                               "streaming": {"publish": "on", "publish_address": "tcp://127.0.0.1:*",
                                             "marker_address": ""}})
        summary = run_tracking(picked, progress=False, overwrite=True)
        meta = json.loads((Path(summary["session"]) / "session.json").read_text())
        assert meta["publish_address"].startswith("tcp://127.0.0.1:") and summary["published"] >= 30
    finally:
        for probe in held:
            probe.close()
