"""Live positions over ZeroMQ: a versioned wire format (pure encoders) and a non-blocking publisher.

Every message is two frames, ``[topic, payload]``; the payload is one msgpack map (default) or one
UTF-8 JSON object. Topics (schema version 1, documented in ``docs/streaming.md``):

``pos``     one per frame: ``v, frame, seq, t_capture, t_publish, n`` and, per blob, the equal-length
            arrays ``id, fragment, x, y, heading, area, status, p``.
``event``   ``v, type, t_publish`` and the event's own fields (identity revisions, fragment start and
            end, frames dropped, source lost or regained).
``status``  about once per second: frame rate, latency percentiles, drops, animals, confidence.

``status`` values are the integers of :class:`toxrt.types.Status`: 0 measured, 1 predicted,
2 crossing, 3 lost (``STATUS_NAMES``).

Publishing must never delay a frame. The socket is an XPUB (a PUB that also sees subscriptions,
so ``wait_for_subscriber`` can beat ZeroMQ's slow-joiner race) sending with ``zmq.NOBLOCK`` under
a high-water mark. It runs in no-drop mode so a full subscriber queue is *reported* (``zmq.Again``)
rather than silently skipped; the publisher then counts the message in ``dropped`` and re-sends it
in lossy mode, so subscribers that keep up still get it and one stuck subscriber never starves the
others. ZeroMQ parks a full subscriber's pipe until it reads again, so ``dropped`` counts congestion
episodes (a lower bound of lost messages); each subscriber sees its exact losses as gaps in ``seq``.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import logging
import math
import threading
import time
from typing import Any, Callable, Mapping

import msgpack
import numpy as np
import zmq

from ..config import zmq_address_problem
from ..errors import ToxrtError
from ..types import FrameResult, IdentityEvent, Status

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_ADDRESS = "tcp://127.0.0.1:5556"
FORMATS = ("msgpack", "json")
TOPIC_POS = b"pos"
TOPIC_EVENT = b"event"
TOPIC_STATUS = b"status"
STATUS_NAMES = {int(s): s.name.lower() for s in Status}

# Event types, shared with the session's events.jsonl ("type" key).
EVENT_IDENTITY = "identity"
EVENT_FRAGMENT_START = "fragment_start"
EVENT_FRAGMENT_END = "fragment_end"
EVENT_FRAMES_DROPPED = "frames_dropped"
EVENT_SOURCE_LOST = "source_lost"
EVENT_SOURCE_REGAINED = "source_regained"

_LATENCY_WINDOW = 512  # latest capture->publish latencies kept for the status percentiles


# ---------------------------------------------------------------------------------------------
# Pure encoding
# ---------------------------------------------------------------------------------------------

def check_format(fmt: str, key: str = "publish_format") -> str:
    if fmt not in FORMATS:
        raise ToxrtError(f"{key}: unknown format {fmt!r}; use one of {FORMATS}")
    return fmt


def encode(message: Mapping[str, Any], fmt: str = "msgpack", camera: str = "") -> bytes:
    """One message (a map of plain Python values) as msgpack or compact UTF-8 JSON; a non-empty
    ``camera`` is added as the ``camera`` field (the publishing camera's name).

    JSON is strict (RFC 8259): a value that is not a finite number (NaN, an unknown heading or
    confidence) is written ``null``, since JavaScript's ``JSON.parse``, System.Text.Json and MATLAB's
    ``jsondecode`` reject ``NaN``. msgpack keeps NaN, which every msgpack library reads as a float.
    """
    if camera:
        message = {**message, "camera": camera}
    if fmt == "msgpack":
        return msgpack.packb(message, use_bin_type=True)
    try:
        return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # rare: only messages holding a NaN or an infinity pay for the second pass
        return json.dumps(strict_json_values(message), separators=(",", ":"), allow_nan=False).encode()


def strict_json_values(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite replaced by None, in nested dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: strict_json_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_values(v) for v in value]
    return value


def decode(payload: bytes) -> dict:
    """A payload of either format: JSON objects start with ``{``, which no msgpack map does.

    Raises ``ValueError`` for anything that is not one map.
    """
    if payload[:1] == b"{":
        try:
            message = json.loads(payload)
        except RecursionError:  # raised by the C parser for JSON nested ~1000 deep
            raise ValueError("JSON nested too deeply") from None
    else:
        try:
            message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except (msgpack.UnpackException, ValueError, TypeError) as exc:
            raise ValueError(f"not msgpack or JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ValueError(f"expected a map, got {type(message).__name__}")
    return message


def position_message(frame: int, seq: int, t_capture: float, t_publish: float,
                     ids: np.ndarray, x: np.ndarray, y: np.ndarray, heading: np.ndarray,
                     area: np.ndarray, status: np.ndarray, p: np.ndarray,
                     fragment: np.ndarray | None = None) -> dict:
    """The ``pos`` map of one frame; every array has one entry per blob (n may be 0).

    ids int (n,) identity 1..N, 0 while undecided or for crossing blobs; x, y float (n,) pixels,
    origin top-left; heading float (n,) main-axis angle in radians in (-pi/2, pi/2]; area float (n,)
    pixels; status int (n,) :class:`Status`; p float (n,) identity probability; fragment int (n,).
    ``tolist()`` turns each array into Python scalars in one C call, which keeps encoding cheap.
    """
    n = int(len(ids))
    return {
        "v": SCHEMA_VERSION,
        "frame": int(frame),
        "seq": int(seq),
        "t_capture": float(t_capture),
        "t_publish": float(t_publish),
        "n": n,
        "id": np.asarray(ids).tolist(),
        "fragment": np.asarray(fragment).tolist() if fragment is not None else [0] * n,
        "x": np.asarray(x, np.float64).tolist(),
        "y": np.asarray(y, np.float64).tolist(),
        "heading": np.asarray(heading, np.float64).tolist(),
        "area": np.asarray(area, np.float64).tolist(),
        "status": np.asarray(status).tolist(),
        "p": np.asarray(p, np.float64).tolist(),
    }


def encode_positions(frame: int, seq: int, t_capture: float, t_publish: float,
                     ids: np.ndarray, x: np.ndarray, y: np.ndarray, heading: np.ndarray,
                     area: np.ndarray, status: np.ndarray, p: np.ndarray,
                     fragment: np.ndarray | None = None, fmt: str = "msgpack", camera: str = "") -> bytes:
    """The ``pos`` payload of one frame (see :func:`position_message` for the arrays)."""
    return encode(position_message(frame, seq, t_capture, t_publish, ids, x, y, heading, area,
                                   status, p, fragment), fmt, camera)


def result_arrays(result: FrameResult) -> dict[str, np.ndarray]:
    """The per-blob arrays of a :class:`FrameResult` under the keyword names of ``encode_positions``."""
    blobs = result.blobs
    return {
        "ids": result.identity, "x": blobs.centroid[:, 0], "y": blobs.centroid[:, 1],
        "heading": blobs.orientation, "area": blobs.area, "status": result.status,
        "p": result.probability, "fragment": result.fragment,
    }


def event_message(event: IdentityEvent | Mapping[str, Any], t_publish: float) -> dict:
    """The ``event`` map: an :class:`IdentityEvent` becomes ``type = "identity"``; a dict needs ``type``."""
    if isinstance(event, IdentityEvent):
        fields = event.as_event()
    elif isinstance(event, Mapping):
        if "type" not in event:
            raise ValueError(f"an event dict needs a 'type' key, got keys {sorted(event)}")
        fields = dict(event)
    else:
        raise TypeError(f"an event must be a dict or an IdentityEvent, got {type(event).__name__}")
    return {"v": SCHEMA_VERSION, **fields, "t_publish": float(t_publish)}


# ---------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------

def is_loopback_address(address: str) -> bool:
    """True for ``ipc://``/``inproc://`` and ``tcp://`` on 127.0.0.0/8, ``localhost`` or ``[::1]``."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: reachable from elsewhere
        return False


def bind_socket(socket: zmq.Socket, address: str, allow_remote: bool, key: str) -> str:
    """Bind, refusing non-loopback addresses unless asked for, with one-line errors; returns the
    endpoint bound ("tcp://127.0.0.1:*" picks a free port). On failure the socket is closed."""
    try:
        problem = zmq_address_problem(address)
        if problem:
            raise ToxrtError(f"{key}: {address!r} {problem}")
        if not allow_remote and not is_loopback_address(address):
            raise ToxrtError(f"{key}: {address} is reachable from other machines; bind 127.0.0.1 "
                             f"or set streaming.allow_remote = true to allow it")
        try:
            socket.bind(address)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ToxrtError(f"{key}: {address}: port already in use (another toxrt session or program?)") from None
            raise ToxrtError(f"{key}: cannot bind {address}: {exc.strerror}") from None
    except ToxrtError:
        socket.close(linger=0)
        raise
    return socket.getsockopt_string(zmq.LAST_ENDPOINT)


# ---------------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------------

class StatusMeter:
    """Per-frame counters summarised about once per second; constant memory.

    Latency is capture -> publish (``t_publish - t_capture``), the part of the loop that toxrt owns.
    """

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self._latency = np.zeros(_LATENCY_WINDOW)
        self._n_latency = 0
        self._frames_since = 0
        self._since = None  # time of the last status
        self.frames = 0
        self.animals = 0
        self.confidence = float("nan")

    def add(self, t_capture: float, t_publish: float, ids: np.ndarray, p: np.ndarray) -> None:
        self._latency[self._n_latency % _LATENCY_WINDOW] = t_publish - t_capture
        self._n_latency += 1
        self._frames_since += 1
        self.frames += 1
        identified = ids > 0
        self.animals = int(np.count_nonzero(identified))
        self.confidence = float(p[identified].mean()) if self.animals else float("nan")

    def due(self, now: float) -> bool:
        if self._since is None:
            self._since = now
            return False
        return now - self._since >= self.interval_s

    def snapshot(self, now: float) -> dict:
        """Rates since the last snapshot and latency percentiles (ms) over the latest frames."""
        elapsed = max(now - (self._since if self._since is not None else now), 1e-9)
        kept = self._latency[:min(self._n_latency, _LATENCY_WINDOW)] * 1000.0
        p50, p95, p99 = (np.percentile(kept, [50, 95, 99]).tolist() if kept.size else [float("nan")] * 3)
        snap = {"fps": self._frames_since / elapsed, "latency_ms_p50": p50, "latency_ms_p95": p95,
                "latency_ms_p99": p99, "frames": self.frames, "animals": self.animals,
                "identity_confidence": self.confidence}
        self._since, self._frames_since = now, 0
        return snap


# ---------------------------------------------------------------------------------------------
# Publisher
# ---------------------------------------------------------------------------------------------

def receive_until(socket: zmq.Socket, stop: threading.Event, handle: Callable[[list[bytes], float], None],
                  poll_ms: int = 100) -> None:
    """Receive multipart messages until ``stop`` is set, calling ``handle(parts, t_arrival)`` for each;
    closes the socket at the end. Run it in the one thread that owns the socket."""
    try:
        while not stop.is_set():
            if not socket.poll(poll_ms, zmq.POLLIN):
                continue
            while True:
                try:
                    parts = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                handle(parts, time.time())
    finally:
        socket.close(linger=0)


class Publisher:
    """Non-blocking ZeroMQ publisher of ``pos``, ``event`` and ``status`` messages.

    Owned by one thread (ZeroMQ sockets are not thread-safe). ``sent`` and ``dropped`` count
    messages of all topics; see the module docstring for what ``dropped`` means.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, fmt: str = "msgpack", allow_remote: bool = False,
                 hwm: int = 1000, status_interval_s: float = 1.0, context: zmq.Context | None = None,
                 key: str = "streaming.publish_address", camera: str = ""):
        self.address = address
        self.fmt = check_format(fmt)
        self.camera = camera  # added to every message as "camera" when not empty
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, int(hwm))
        # A small kernel send buffer: a stalled subscriber hits the high-water mark (and the drop
        # count) after a few hundred messages instead of seconds of stale positions in TCP buffers.
        self._socket.setsockopt(zmq.SNDBUF, 64 * 1024)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.XPUB_NODROP, 1)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscribe reaches us, not only the first
        self.address = bind_socket(self._socket, address, allow_remote, key)
        self.seq = 0
        self.sent = 0
        self.dropped = 0
        self.source_dropped = 0  # frames the source dropped, reported in status (set by the caller)
        self.subscriptions = 0  # subscribe minus unsubscribe messages seen
        self.status_fields: dict[str, Any] = {}  # added to every status message (set by the caller)
        self.meter = StatusMeter(status_interval_s)
        self._closed = False

    # -- sending --------------------------------------------------------------------------------
    def _send(self, topic: bytes, payload: bytes) -> bool:
        try:
            self._socket.send_multipart((topic, payload), zmq.NOBLOCK)
        except zmq.Again:
            # A subscriber's queue is full: count it, then deliver to the others in lossy mode.
            self.dropped += 1
            self._socket.setsockopt(zmq.XPUB_NODROP, 0)
            try:
                self._socket.send_multipart((topic, payload), zmq.NOBLOCK)
            except zmq.Again:
                pass
            finally:
                self._socket.setsockopt(zmq.XPUB_NODROP, 1)
            return False
        self.sent += 1
        return True

    def publish_positions(self, frame: int, t_capture: float, ids: np.ndarray, x: np.ndarray,
                          y: np.ndarray, heading: np.ndarray, area: np.ndarray, status: np.ndarray,
                          p: np.ndarray, fragment: np.ndarray | None = None) -> bool:
        """Send one frame's ``pos`` (and a ``status`` when one is due); never blocks.

        ``t_capture`` is the frame's capture time in UNIX seconds. Returns False when the message
        met a full subscriber queue (counted in ``dropped``).
        """
        t_publish = time.time()
        payload = encode_positions(frame, self.seq, t_capture, t_publish, ids, x, y, heading, area,
                                   status, p, fragment, self.fmt, self.camera)
        self.seq += 1
        ok = self._send(TOPIC_POS, payload)
        self.meter.add(t_capture, t_publish, np.asarray(ids), np.asarray(p))
        if self.meter.due(t_publish):
            self.publish_status()
        return ok

    def publish_result(self, result: FrameResult, t_capture: float | None = None) -> bool:
        """``publish_positions`` for a :class:`FrameResult`, then its events; ``t_capture``
        defaults to ``result.time_s`` (UNIX seconds for live sources)."""
        t = result.time_s if t_capture is None else t_capture
        ok = self.publish_positions(result.frame_index, t, **result_arrays(result))
        for event in result.events:
            self.publish_event(event)
        return ok

    def publish_event(self, event: IdentityEvent | Mapping[str, Any]) -> bool:
        """Send one ``event``: an :class:`IdentityEvent` or a dict with ``type`` and plain values."""
        return self._send(TOPIC_EVENT, encode(event_message(event, time.time()), self.fmt, self.camera))

    def publish_status(self, **extra: Any) -> bool:
        """Send a ``status`` now (``publish_positions`` does so about once per second)."""
        now = time.time()
        self.poll_subscriptions()
        message = {"v": SCHEMA_VERSION, "t_publish": now, **self.meter.snapshot(now),
                   "published": self.sent, "dropped_publish": self.dropped,
                   "dropped_source": int(self.source_dropped), "subscriptions": self.subscriptions,
                   **self.status_fields, **extra}
        return self._send(TOPIC_STATUS, encode(message, self.fmt, self.camera))

    # -- subscriptions --------------------------------------------------------------------------
    def poll_subscriptions(self, timeout_s: float = 0.0) -> list[bytes]:
        """Drain the subscription messages the XPUB socket queued; returns the topics subscribed."""
        topics: list[bytes] = []
        timeout_ms = int(timeout_s * 1000)
        while self._socket.poll(timeout_ms, zmq.POLLIN):
            message = self._socket.recv(zmq.NOBLOCK)
            if message[:1] == b"\x01":
                self.subscriptions += 1
                topics.append(message[1:])
            elif message[:1] == b"\x00":
                self.subscriptions = max(0, self.subscriptions - 1)
            timeout_ms = 0
        return topics

    def wait_for_subscriber(self, topic: bytes = TOPIC_POS, timeout_s: float = 5.0) -> bool:
        """Block until a subscription that matches ``topic`` arrives (the slow-joiner guard).

        Once ZeroMQ reports the subscription its filter is in place, so the next message reaches
        that subscriber. Returns False on timeout.
        """
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if any(topic.startswith(prefix) for prefix in self.poll_subscriptions(min(left, 0.1))):
                return True
        return False

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._socket.close(linger=0)

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
