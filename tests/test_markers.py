"""Markers from a stimulus program into the session, over real sockets on 127.0.0.1."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import msgpack
import pytest
import zmq

from toxrt.errors import ToxrtError
from toxrt.stream.markers import MarkerReceiver, MarkerSender, parse_marker

ANY_PORT = "tcp://127.0.0.1:*"


def drain_until(receiver: MarkerReceiver, count: int, timeout_s: float = 10.0, rejected: int = 0) -> list[dict]:
    """Markers drained until ``count`` arrived and ``rejected`` were refused (bounded wait)."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while (len(got) < count or receiver.rejected < rejected) and time.monotonic() < deadline:
        got.extend(receiver.drain())
        time.sleep(0.01)
    return got


def test_parse_marker_fields_and_payload():
    marker = parse_marker(msgpack.packb({"label": "on", "t_sent": 5, "payload": {"zone": 2}, "trial": 7}), 9.0)
    assert marker == {"label": "on", "t_sent": 5.0, "t_arrival": 9.0, "payload": {"trial": 7, "zone": 2}}
    marker = parse_marker(b'{"label": "off"}', 1.0)
    assert marker == {"label": "off", "t_sent": None, "t_arrival": 1.0, "payload": {}}


@pytest.mark.parametrize("payload", [
    b"", b"\xc1garbage", b"[1, 2]", msgpack.packb({"t_sent": 1.0}), msgpack.packb({"label": ""}),
    msgpack.packb({"label": 3}), json.dumps({"label": "x", "t_sent": "now"}).encode(),
    msgpack.packb({"label": "x", "payload": [1]}), b"{" + b" " * 70000 + b"}",
])
def test_parse_marker_rejects_malformed(payload):
    with pytest.raises(ValueError):
        parse_marker(payload, 0.0)


SENDER = r"""
import sys
from toxrt.stream.markers import send_marker
assert send_marker(sys.argv[1], "stimulus_on", zone=3, intensity=0.5)
"""


def test_markers_from_another_process_arrive_stamped():
    with MarkerReceiver(ANY_PORT) as receiver:
        before = time.time()
        subprocess.run([sys.executable, "-c", SENDER, receiver.address], check=True, timeout=60)
        (marker,) = drain_until(receiver, 1)
    assert marker["label"] == "stimulus_on"
    assert marker["payload"] == {"zone": 3, "intensity": 0.5}
    assert before <= marker["t_sent"] <= marker["t_arrival"]  # one machine, one clock
    assert receiver.received == 1 and receiver.rejected == 0


def test_malformed_markers_are_counted_never_raised():
    with MarkerReceiver(ANY_PORT) as receiver:
        raw = zmq.Context.instance().socket(zmq.PUSH)
        raw.setsockopt(zmq.LINGER, 1000)
        raw.connect(receiver.address)
        raw.send(b"\xc1not a marker")
        raw.send(json.dumps({"no": "label"}).encode())
        raw.send_multipart([b"two", b"frames"])
        raw.send(json.dumps({"label": "fine", "t_sent": 1.0}).encode())  # JSON, as MATLAB would send
        raw.close()
        got = drain_until(receiver, 1, rejected=3)
        assert [m["label"] for m in got] == ["fine"]
        assert receiver.rejected == 3 and receiver.received == 1
        assert receiver.drain() == []


def test_sender_in_json_and_a_bounded_queue():
    with MarkerReceiver(ANY_PORT, max_pending=3) as receiver:
        with MarkerSender(receiver.address, fmt="json") as sender:
            for k in range(5):
                assert sender.send("tick", k=k)
        deadline = time.monotonic() + 10
        while receiver.received < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        got = receiver.drain()
    assert [m["payload"]["k"] for m in got] == [2, 3, 4]  # the oldest are dropped, and counted
    assert receiver.overflow == 2


def test_bind_errors_are_one_line():
    with pytest.raises(ToxrtError, match="allow_remote"):
        MarkerReceiver("tcp://0.0.0.0:5557")
    with MarkerReceiver(ANY_PORT) as receiver:
        with pytest.raises(ToxrtError, match="already in use"):
            MarkerReceiver(receiver.address)
    with pytest.raises(ToxrtError, match="not a ZeroMQ address"):
        MarkerSender("localhost:5557")


# ---------------------------------------------------------------------------------------------
# Hostile markers: rejected and counted, never more
# ---------------------------------------------------------------------------------------------

def nested_list(depth: int) -> list:
    value: list = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


HOSTILE = [
    msgpack.packb({"label": "bin", "payload": {"raw": b"\x00\x01\x02"}}, use_bin_type=True),
    msgpack.packb({"label": "ts", "payload": {"when": msgpack.Timestamp(1700000000, 5)}}),
    msgpack.packb({"label": "ext", "extra": msgpack.ExtType(7, b"xy")}),
    b'{"label": "deep", "payload": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    msgpack.packb({"label": "deep_msgpack", "payload": {"x": nested_list(20)}}),
    msgpack.packb({"label": "intkey", "payload": {1: "one"}}, strict_types=False),
    json.dumps({"label": "big_t", "t_sent": 10 ** 400}).encode(),
    b"{" + b" " * 100_000 + b"}",
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_parse_marker_rejects_values_events_jsonl_cannot_hold(payload):
    with pytest.raises(ValueError):
        parse_marker(payload, 0.0)


def test_plain_nested_payloads_are_accepted_and_json_writable():
    nested = {"a": [1, 2.5, None, True, "s", {"b": [{"c": []}]}]}
    marker = parse_marker(msgpack.packb({"label": "ok", "payload": nested}), 1.0)
    assert json.loads(json.dumps(marker)) == marker


def test_hostile_markers_never_stop_the_channel_and_are_counted():
    ten_megabytes = b"{" + b" " * (10 * 1024 * 1024) + b"}"
    with MarkerReceiver(ANY_PORT) as receiver:
        raw = zmq.Context.instance().socket(zmq.PUSH)
        raw.setsockopt(zmq.LINGER, 5000)
        raw.connect(receiver.address)
        for payload in HOSTILE + [ten_megabytes]:
            raw.send(payload)
        raw.send(msgpack.packb({"label": "toxrt.stop"}))
        raw.close()
        got = drain_until(receiver, 1, rejected=len(HOSTILE) + 1)
        assert [m["label"] for m in got] == ["toxrt.stop"]
        assert receiver.rejected == len(HOSTILE) + 1 and receiver.received == 1
        assert receiver.too_large == 2  # the 100 kB one and the 10 MB one
        assert receiver._thread.is_alive()


def test_rejection_warnings_are_rate_limited(caplog):
    now = [0.0]
    with MarkerReceiver(ANY_PORT, clock=lambda: now[0]) as receiver:
        raw = zmq.Context.instance().socket(zmq.PUSH)
        raw.setsockopt(zmq.LINGER, 5000)
        raw.connect(receiver.address)
        with caplog.at_level("WARNING", logger="toxrt.stream.markers"):
            for k in range(2000):
                raw.send(b"\xc1bad")
                if k == 1000:  # a fake clock: ten seconds pass
                    drain_until(receiver, 0, rejected=1001)
                    now[0] += 10.0
            raw.close()
            drain_until(receiver, 0, rejected=2000)
    assert receiver.rejected == 2000
    lines = [r for r in caplog.records if r.name == "toxrt.stream.markers"]
    assert len(lines) == 6  # five one by one, then one summary after ten seconds
    assert "in all" in lines[-1].getMessage()


BURST_SENDER = r"""
import sys
from toxrt.stream.markers import MarkerSender
with MarkerSender(sys.argv[1], hwm=100000, linger_s=30.0) as sender:
    for k in range(int(sys.argv[2])):
        assert sender.send("tick", k=k, pad="x" * 60000)
"""


def test_a_sender_that_exits_right_after_sending_delivers_everything():
    """Markers still queued in the sender when its script ends are delivered (within linger_s),
    also to a receiver that is busy, as a tracking session is."""
    import threading

    count = 1500  # 90 MB: more than the receiving queue and the TCP buffers hold at once
    busy = threading.Event()

    def hog_the_interpreter():
        while not busy.is_set():
            sum(range(1000))

    with MarkerReceiver(ANY_PORT, max_pending=100000) as receiver:
        hog = threading.Thread(target=hog_the_interpreter, daemon=True)
        hog.start()
        try:
            subprocess.run([sys.executable, "-c", BURST_SENDER, receiver.address, str(count)], check=True, timeout=120)
        finally:
            busy.set()
            hog.join()
        got = drain_until(receiver, count, timeout_s=60)
    assert [m["payload"]["k"] for m in got] == list(range(count))
