"""The wire format and the non-blocking publisher, over real sockets on 127.0.0.1."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from toxrt.errors import ToxrtError
from toxrt.stream.publish import Publisher, StatusMeter
from toxrt.stream.sockets import is_loopback_address
from toxrt.stream.wire import decode, encode, encode_positions, event_message
from toxrt.types import STATUS_NAMES, IdentityEvent, Status

ANY_PORT = "tcp://127.0.0.1:*"
POS_KEYS = {"v", "frame", "seq", "t_capture", "t_publish", "n", "id", "fragment", "x", "y", "heading",
            "area", "status", "p"}


def animals(n: int, seed: int, frame: int = 0) -> dict[str, np.ndarray]:
    """Per-blob arrays as the pipeline holds them (dtypes of FrameResult / Blobs)."""
    rng = np.random.default_rng(seed + 1000 * frame)
    return {
        "ids": np.arange(1, n + 1, dtype=np.int32),
        "x": rng.uniform(0, 640, n), "y": rng.uniform(0, 480, n),
        "heading": rng.uniform(-np.pi / 2, np.pi / 2, n), "area": rng.uniform(100, 400, n),
        "status": rng.integers(0, len(Status), n).astype(np.uint8), "p": rng.random(n).astype(np.float32),
        "fragment": np.arange(n, dtype=np.int64) + 100,
    }


def subscriber(address: str, topics=(b"",), hwm: int = 1000, rcvbuf: int = -1) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVHWM, hwm)
    if rcvbuf > 0:
        socket.setsockopt(zmq.RCVBUF, rcvbuf)
    for topic in topics:
        socket.setsockopt(zmq.SUBSCRIBE, topic)
    socket.connect(address)
    return socket


def recv(socket: zmq.Socket, timeout_s: float = 5.0) -> list[bytes]:
    assert socket.poll(int(timeout_s * 1000)), "nothing received in time"
    return socket.recv_multipart()


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_encode_positions_round_trips_with_the_documented_schema(fmt):
    a = animals(20, seed=1)
    payload = encode_positions(7, 3, 1700000000.25, 1700000000.5, **a, fmt=fmt)
    if fmt == "json":
        assert payload[:1] == b"{" and json.loads(payload)["frame"] == 7
    else:
        assert msgpack.unpackb(payload)["frame"] == 7
    message = decode(payload)
    assert set(message) == POS_KEYS
    assert (message["v"], message["frame"], message["seq"], message["n"]) == (1, 7, 3, 20)
    assert (message["t_capture"], message["t_publish"]) == (1700000000.25, 1700000000.5)
    assert message["id"] == a["ids"].tolist() and message["fragment"] == a["fragment"].tolist()
    for key, name in (("x", "x"), ("y", "y"), ("heading", "heading"), ("area", "area"), ("p", "p")):
        np.testing.assert_array_equal(message[key], a[name].astype(np.float64))
    assert message["status"] == a["status"].tolist()
    assert all(isinstance(s, int) and s in STATUS_NAMES for s in message["status"])


def strict_loads(payload: bytes) -> dict:
    """JSON as JavaScript's JSON.parse reads it: NaN, Infinity and -Infinity are errors."""
    def reject(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(payload, parse_constant=reject)


def test_json_payloads_are_strict_json_with_null_for_unknown_values():
    a = animals(4, seed=3)
    a["heading"][[1, 3]] = np.nan  # predicted rows have no heading
    a["x"][2] = np.inf
    message = strict_loads(encode_positions(7, 3, 1.0, 2.0, **a, fmt="json"))
    assert message["heading"][1] is None and message["heading"][3] is None and message["x"][2] is None
    assert message["heading"][0] == pytest.approx(a["heading"][0]) and message["n"] == 4
    # msgpack keeps NaN (every msgpack library reads it as a float).
    assert np.isnan(decode(encode_positions(7, 3, 1.0, 2.0, **a))["heading"][1])
    status = strict_loads(encode({"v": 1, "identity_confidence": float("nan"), "nested": [{"q": float("-inf")}]},
                                 "json"))
    assert status == {"v": 1, "identity_confidence": None, "nested": [{"q": None}]}


def test_encode_positions_of_a_frame_without_blobs():
    empty = {k: v[:0] for k, v in animals(3, seed=2).items()}
    message = decode(encode_positions(0, 0, 1.0, 2.0, **empty))
    assert message["n"] == 0 and message["id"] == [] and message["x"] == []


def test_status_names_follow_the_status_enum():
    assert STATUS_NAMES == {0: "measured", 1: "predicted", 2: "crossing"}
    assert STATUS_NAMES[int(Status.CROSSING)] == "crossing"


def test_decode_rejects_what_is_not_one_map():
    for bad in (b"", b"\xc1", b"[1, 2]", b"{not json", msgpack.packb([1, 2]), msgpack.packb(5) + b"x"):
        with pytest.raises(ValueError):
            decode(bad)


def test_identity_event_message_uses_the_recorded_event_names():
    message = event_message(IdentityEvent(frame=12, fragment=4, old_identity=2, new_identity=3,
                                          probability=0.9), t_publish=5.0)
    assert message == {"v": 1, "type": "identity", "frame": 12, "fragment": 4, "old_identity": 2,
                       "new_identity": 3, "probability": 0.9, "t_publish": 5.0}
    assert event_message({"type": "source_lost", "frame": 3}, 1.0)["type"] == "source_lost"
    with pytest.raises(ValueError):
        event_message({"frame": 3}, 1.0)


def test_status_meter_percentiles_and_rates():
    meter = StatusMeter(interval_s=1.0)
    assert not meter.due(100.0)  # the first call starts the clock
    ids = np.array([1, 2, 0], np.int32)
    p = np.array([0.8, 0.6, 0.0], np.float32)
    for k in range(100):
        meter.add(t_capture=100.0, t_publish=100.0 + (k + 1) / 1000.0, ids=ids, p=p)  # 1..100 ms
    assert meter.due(101.0)
    snap = meter.snapshot(102.0)
    assert snap["fps"] == pytest.approx(50.0)
    assert snap["latency_ms_p50"] == pytest.approx(50.5)
    assert snap["latency_ms_p99"] == pytest.approx(99.01)
    assert snap["animals"] == 2 and snap["identity_confidence"] == pytest.approx(0.7)
    assert not meter.due(102.5)


# A subscriber in another process: prints every pos message it gets as one JSON line.
SUBSCRIBER = r"""
import json, sys, zmq
from toxrt.stream.wire import decode
address, count = sys.argv[1], int(sys.argv[2])
socket = zmq.Context().socket(zmq.SUB)
socket.setsockopt(zmq.SUBSCRIBE, b"pos")
socket.setsockopt(zmq.LINGER, 0)
socket.connect(address)
for _ in range(count):
    if not socket.poll(10000):
        break
    topic, payload = socket.recv_multipart()
    print(json.dumps({"topic": topic.decode(), **decode(payload)}), flush=True)
"""


def test_subscriber_in_another_process_receives_every_frame_in_order():
    n_frames, n_animals = 300, 20
    with Publisher(ANY_PORT) as publisher:
        child = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, publisher.address, str(n_frames)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert publisher.wait_for_subscriber(b"pos", timeout_s=30.0), "the subscriber never subscribed"
            sent = []
            for frame in range(n_frames):
                a = animals(n_animals, seed=3, frame=frame)
                t_capture = time.time()
                publisher.publish_positions(frame, t_capture, **a)
                sent.append((t_capture, a))
            out, _ = child.communicate(timeout=30)
        finally:
            child.kill()
        assert publisher.dropped == 0
    received = [json.loads(line) for line in out.splitlines()]
    assert len(received) == n_frames
    for frame, (message, (t_capture, a)) in enumerate(zip(received, sent)):
        assert message["topic"] == "pos"
        assert set(message) - {"topic"} == POS_KEYS
        assert (message["frame"], message["seq"], message["v"]) == (frame, frame, 1)
        assert message["t_capture"] == t_capture and message["t_publish"] >= t_capture
        assert message["id"] == a["ids"].tolist()
        np.testing.assert_array_equal(message["x"], a["x"])
        assert message["status"] == a["status"].tolist()


def test_json_format_on_the_wire():
    with Publisher(ANY_PORT, fmt="json") as publisher:
        socket = subscriber(publisher.address, (b"pos", b"event"))
        assert publisher.wait_for_subscriber(b"pos")
        publisher.publish_positions(5, 1.5, **animals(2, seed=4))
        publisher.publish_event({"type": "source_lost", "frame": 5})
        topic, payload = recv(socket)
        assert topic == b"pos" and json.loads(payload)["frame"] == 5
        topic, payload = recv(socket)
        assert topic == b"event" and json.loads(payload)["type"] == "source_lost"
        socket.close()


def test_a_subscriber_that_never_reads_does_not_block_the_publisher_or_starve_others():
    n_messages = 100_000
    one = animals(1, seed=5)
    with Publisher(ANY_PORT, hwm=10, status_interval_s=1e9) as publisher:  # pos messages only
        stuck = subscriber(publisher.address, (b"pos",), hwm=10, rcvbuf=4096)  # never read
        assert publisher.wait_for_subscriber(b"pos")
        for frame in range(n_messages):
            publisher.publish_positions(frame, 0.0, **one)
        assert publisher.dropped > 0
        assert publisher.sent + publisher.dropped == n_messages  # every call returned and was counted

        # A subscriber that reads still gets what is sent while the stuck one stays full.
        reader = subscriber(publisher.address, (b"pos",))
        assert publisher.wait_for_subscriber(b"pos")
        publisher.publish_positions(n_messages, 0.0, **one)
        topic, payload = recv(reader)
        assert decode(payload)["frame"] == n_messages
        stuck.close()
        reader.close()


def test_a_subscriber_that_reconnects_resumes():
    with Publisher(ANY_PORT) as publisher:
        first = subscriber(publisher.address, (b"pos",))
        assert publisher.wait_for_subscriber(b"pos")
        publisher.publish_positions(0, 0.0, **animals(1, seed=6))
        assert decode(recv(first)[1])["seq"] == 0
        first.close()
        again = subscriber(publisher.address, (b"pos",))
        assert publisher.wait_for_subscriber(b"pos")
        publisher.publish_positions(1, 0.0, **animals(1, seed=6))
        assert decode(recv(again)[1])["seq"] == 1
        again.close()


def test_status_messages_carry_rates_latency_and_drops():
    with Publisher(ANY_PORT, status_interval_s=0.0) as publisher:
        socket = subscriber(publisher.address, (b"status",))
        assert publisher.wait_for_subscriber(b"status")
        publisher.source_dropped = 4
        t = time.time()
        publisher.publish_positions(0, t - 0.010, **animals(3, seed=7))  # starts the status clock
        publisher.publish_positions(1, t - 0.010, **animals(3, seed=7))
        status = decode(recv(socket)[1])
        assert {"fps", "latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "frames", "animals",
                "identity_confidence", "dropped_publish", "dropped_source", "published"} <= set(status)
        assert status["frames"] == 2 and status["animals"] == 3 and status["dropped_source"] == 4
        assert status["latency_ms_p50"] >= 10.0  # published after a capture 10 ms earlier
        socket.close()


def test_non_loopback_bind_is_refused_unless_allowed():
    for address in ("tcp://0.0.0.0:5556", "tcp://*:5556", "tcp://192.0.2.7:5556", "tcp://eth0:5556"):
        with pytest.raises(ToxrtError, match="allow_remote"):
            Publisher(address)
    # Allowed, the check is passed and binding itself decides (an interface that does not exist).
    with pytest.raises(ToxrtError, match="cannot bind"):
        Publisher("tcp://toxrt-no-such-interface:5556", allow_remote=True)
    with pytest.raises(ToxrtError, match="not a ZeroMQ address"):
        Publisher("127.0.0.1:5556")
    assert is_loopback_address("tcp://127.0.0.1:1") and is_loopback_address("tcp://localhost:1")
    assert is_loopback_address("tcp://[::1]:1") and is_loopback_address("ipc:///tmp/toxrt")
    assert not is_loopback_address("tcp://10.0.0.1:1")


def test_port_in_use_is_a_one_line_error():
    with Publisher(ANY_PORT) as publisher:
        with pytest.raises(ToxrtError, match="already in use") as info:
            Publisher(publisher.address)
        assert "\n" not in str(info.value) and publisher.address in str(info.value)


def test_unknown_format_is_refused():
    with pytest.raises(ToxrtError, match="publish_format"):
        Publisher(ANY_PORT, fmt="xml")
