"""The position client, ``listen`` and the closed-loop example, against a real publisher."""
from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from toxrt.stream.listen import CSV_COLUMNS, format_table, listen
from toxrt.stream.client import PositionClient
from toxrt.errors import ToxrtError
from toxrt.stream.markers import MarkerReceiver
from toxrt.stream.publish import Publisher
from toxrt.stream.wire import encode_positions

ANY_PORT = "tcp://127.0.0.1:*"
ROOT = Path(__file__).resolve().parents[1]


def frame_arrays(xs: list[float], ids: list[int] | None = None) -> dict[str, np.ndarray]:
    n = len(xs)
    return {
        "ids": np.array(ids if ids is not None else range(1, n + 1), np.int32),
        "x": np.array(xs, float), "y": np.full(n, 50.0), "heading": np.zeros(n),
        "area": np.full(n, 200.0), "status": np.zeros(n, np.uint8), "p": np.full(n, 0.9, np.float32),
        "fragment": np.arange(n, dtype=np.int64),
    }


def test_client_keeps_the_latest_position_of_each_identity():
    with Publisher(ANY_PORT) as publisher, PositionClient(publisher.address) as client:
        assert publisher.wait_for_subscriber(b"pos")
        t0 = time.time() - 1.0
        publisher.publish_positions(0, t0, **frame_arrays([10.0, 20.0]))
        # Identity 2 is missing in frame 1 and an undecided blob (id 0) appears.
        publisher.publish_positions(1, t0 + 0.5, **frame_arrays([11.0, 99.0], ids=[1, 0]))
        publisher.publish_event({"type": "fragment_start", "fragment": 3, "frame": 1})
        assert client.wait_for_frame(after_seq=0, timeout_s=10)["frame"] == 1
        latest = client.latest()
        assert sorted(latest) == [1, 2]
        assert (latest[1].x, latest[1].frame) == (11.0, 1)
        assert (latest[2].x, latest[2].frame, latest[2].t_capture) == (20.0, 0, t0)
        now = time.time()
        assert latest[2].age_s(now) == pytest.approx(now - t0)
        assert client.stream_age_s(now) == pytest.approx(now - t0 - 0.5)
        deadline = time.monotonic() + 10
        events = []
        while not events and time.monotonic() < deadline:
            events = client.events()
            time.sleep(0.01)
        assert events[0]["type"] == "fragment_start" and "t_receive" in events[0]
        assert client.received == 2 and client.missed == 0


def test_client_counts_missed_messages_and_rejects_garbage():
    with Publisher(ANY_PORT) as publisher, PositionClient(publisher.address) as client:
        assert publisher.wait_for_subscriber(b"pos")
        publisher.publish_positions(0, 0.0, **frame_arrays([1.0]))
        publisher.seq += 4  # as if four messages were lost on the way
        publisher._socket.send_multipart([b"pos", b"\xc1"])  # a payload no decoder accepts
        publisher.publish_positions(5, 0.0, **frame_arrays([2.0]))
        assert client.wait_for_frame(after_seq=4, timeout_s=10)["frame"] == 5
        assert client.missed == 4 and client.rejected == 1 and client.received == 2


def test_listen_prints_a_table_and_writes_csv(tmp_path):
    n_frames = 20
    out = io.StringIO()
    csv_path = tmp_path / "stream.csv"
    with Publisher(ANY_PORT, fmt="json") as publisher:
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(
            listen(publisher.address, csv_path=str(csv_path), max_frames=n_frames, duration_s=30, out=out,
                   refresh_s=0.0)))
        thread.start()
        assert publisher.wait_for_subscriber(b"pos", timeout_s=10)
        for frame in range(n_frames):
            publisher.publish_positions(frame, time.time(), **frame_arrays([frame, 2.0 * frame]))
        thread.join(timeout=30)
    assert result == {"frames": n_frames, "missed": 0, "events": 0, "rejected": 0}
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2 * n_frames
    assert [float(r["x"]) for r in rows if r["id"] == "2"] == [2.0 * f for f in range(n_frames)]
    text = out.getvalue()
    assert "frame      19" in text and "measured" in text and f"received {n_frames} frames" in text


def test_format_table_lists_identified_animals_first():
    from toxrt.stream.wire import decode

    message = decode(encode_positions(3, 3, 10.0, 10.01, **frame_arrays([5.0, 6.0, 7.0], ids=[0, 2, 1])))
    lines = format_table(message, None, missed=0, now=10.02).splitlines()
    assert "age    20.0 ms" in lines[0]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2", "-"]


def test_listen_refuses_a_bad_address_and_csv_path(tmp_path):
    with pytest.raises(ToxrtError, match="not a ZeroMQ address"):
        listen("localhost:5556", duration_s=0.1, out=io.StringIO())
    with pytest.raises(ToxrtError, match="cannot write"):
        listen("tcp://127.0.0.1:5556", csv_path=str(tmp_path / "missing" / "x.csv"), duration_s=0.1,
               out=io.StringIO())


def test_closed_loop_example_sends_a_marker_when_an_animal_enters_the_zone():
    with Publisher(ANY_PORT) as publisher, MarkerReceiver(ANY_PORT) as receiver:
        child = subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "closed_loop_example.py"), "--address", publisher.address,
             "--markers", receiver.address, "--zone", "100,0,200,100", "--identity", "1",
             "--duration", "60", "--max-triggers", "1"], stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert publisher.wait_for_subscriber(b"pos", timeout_s=30)
            markers: list[dict] = []
            frame = 0
            deadline = time.monotonic() + 30
            while not markers and time.monotonic() < deadline:
                x1 = 50.0 if frame < 3 else 150.0  # animal 1 enters the zone at frame 3; animal 2 stays out
                publisher.publish_positions(frame, time.time(), **frame_arrays([x1, 300.0]))
                frame += 1
                time.sleep(0.02)
                markers = receiver.drain()
            _, log = child.communicate(timeout=30)
        finally:
            child.kill()
    assert child.returncode == 0, log
    (marker,) = markers
    assert marker["label"] == "stimulus_on"
    assert marker["payload"]["identity"] == 1 and marker["payload"]["frame"] == 3
    assert marker["t_arrival"] >= marker["payload"]["t_capture"]
    assert "entered the zone at frame 3" in log


# ---------------------------------------------------------------------------------------------
# Malformed messages are rejected and counted; losses are counted exactly from seq gaps
# ---------------------------------------------------------------------------------------------

def malformed_positions() -> list[bytes]:
    import msgpack

    valid = {"v": 1, "frame": 1, "seq": 1, "t_capture": 0.0, "t_publish": 0.0, "n": 1, "id": [1], "x": [1.0],
             "y": [1.0], "heading": [0.0], "area": [1.0], "status": [0], "p": [1.0], "fragment": [0]}
    broken = [
        {"v": 1, "seq": 1},  # the fields missing
        {"v": 1, "seq": 10 ** 9},  # the seq of an invalid message is not trusted: no billion missed
        {**valid, "x": [1.0, 2.0]},  # arrays of unequal length
        {**valid, "id": ["one"]},  # a string where an identity goes
        {**valid, "frame": None},
        {**valid, "fragment": "x"},
        {**valid, "t_capture": "now"},
    ]
    return [msgpack.packb(m) for m in broken] + [b'{"seq": ' + b"[" * 5000 + b"]" * 5000 + b"}"]


def test_malformed_positions_are_rejected_and_the_client_keeps_receiving():
    bad = malformed_positions()
    with Publisher(ANY_PORT) as publisher, PositionClient(publisher.address) as client:
        assert publisher.wait_for_subscriber(b"pos")
        publisher.publish_positions(0, 0.0, **frame_arrays([1.0]))
        for payload in bad:
            publisher._socket.send_multipart([b"pos", payload])
        publisher._socket.send_multipart([b"pos", b"x", b"three frames"])
        publisher.seq = 2  # a rejected pos carried seq 1: it is not counted as missed too
        publisher.publish_positions(2, 0.0, **frame_arrays([2.0]))
        assert client.wait_for_frame(after_seq=1, timeout_s=10)["frame"] == 2
        assert client.rejected == len(bad) + 1 and client.received == 2 and client.missed == 0
        assert client._thread.is_alive()


def test_listen_rejects_malformed_positions_and_goes_on():
    out = io.StringIO()
    bad = malformed_positions()
    with Publisher(ANY_PORT) as publisher:
        result: dict = {}
        thread = threading.Thread(target=lambda: result.update(listen(publisher.address, max_frames=2, duration_s=30,
                                                                      out=out, refresh_s=0.0)))
        thread.start()
        assert publisher.wait_for_subscriber(b"pos", timeout_s=10)
        publisher.publish_positions(0, time.time(), **frame_arrays([1.0]))
        for payload in bad:
            publisher._socket.send_multipart([b"pos", payload])
        publisher._socket.send_multipart([b"status", b'{"fps": "fast", "latency_ms_p50": []}'])
        publisher.seq = 5  # seq 1 was a rejected pos; 2, 3 and 4 were lost
        publisher.publish_positions(5, time.time(), **frame_arrays([2.0]))
        thread.join(timeout=30)
    assert result == {"frames": 2, "missed": 3, "events": 0, "rejected": len(bad)}
    assert "lost 3 on the way" in out.getvalue() and "Traceback" not in out.getvalue()


def test_lost_positions_are_counted_exactly_from_seq_gaps():
    """A subscriber that stops reading loses many messages; the publisher sees a few congestion
    episodes, the subscriber's seq gaps count every lost message."""
    import zmq

    from toxrt.stream.client import SeqCounter
    from toxrt.stream.wire import decode

    context = zmq.Context.instance()
    with Publisher(ANY_PORT, hwm=10) as publisher:
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 10)
        sub.setsockopt(zmq.RCVBUF, 4096)
        sub.setsockopt(zmq.SUBSCRIBE, b"pos")
        sub.connect(publisher.address)
        assert publisher.wait_for_subscriber(b"pos")
        total = 3000
        for frame in range(total - 1):  # the subscriber does not read meanwhile
            publisher.publish_positions(frame, 0.0, **frame_arrays([1.0] * 20))
        counter, received = SeqCounter(), 0
        while sub.poll(500):
            counter.see(decode(sub.recv_multipart()[1])["seq"])
            received += 1
        publisher.publish_positions(total - 1, 0.0, **frame_arrays([1.0]))  # the last one gets through
        assert sub.poll(5000)
        counter.see(decode(sub.recv_multipart()[1])["seq"])
        received += 1
        sub.close(linger=0)
    assert counter.missed > 0 and received + counter.missed == total
    assert publisher.dropped < counter.missed  # the publisher's count is only a lower bound


def test_a_port_beyond_65535_is_refused_everywhere():
    """ZeroMQ would silently bind or connect port 99999 % 65536; every entry point refuses it."""
    from toxrt.stream.markers import MarkerSender

    for make in (Publisher, MarkerReceiver, PositionClient, MarkerSender):
        with pytest.raises(ToxrtError, match="port '99999'"):
            make("tcp://127.0.0.1:99999")
