"""The non-blocking ZeroMQ publisher of ``pos``, ``event`` and ``status`` messages (``wire.py``).

Publishing must never delay a frame. The socket is an XPUB (a PUB that also sees subscriptions,
so ``wait_for_subscriber`` can beat ZeroMQ's slow-joiner race) sending with ``zmq.NOBLOCK`` under
a high-water mark. It runs in no-drop mode so a full subscriber queue is *reported* (``zmq.Again``)
rather than silently skipped; the publisher then counts the message in ``dropped`` and re-sends it
in lossy mode, so subscribers that keep up still get it and one stuck subscriber never starves the
others. ZeroMQ parks a full subscriber's pipe until it reads again, so ``dropped`` counts congestion
episodes (a lower bound of lost messages); each subscriber sees its exact losses as gaps in ``seq``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import numpy as np
import zmq

from ..config_checks import DEFAULT_PUBLISH_ADDRESS, DEFAULT_PUBLISH_FORMAT
from ..timing import TimeRing
from ..types import IdentityEvent
from .sockets import bind_socket
from .wire import (SCHEMA_VERSION, TOPIC_EVENT, TOPIC_POS, TOPIC_STATUS, check_format, encode, encode_positions,
                   event_message)

log = logging.getLogger(__name__)

LATENCY_WINDOW = 512  # latest capture->publish latencies kept for the status percentiles


class StatusMeter:
    """Per-frame counters summarised about once per second; constant memory.

    Latency is capture -> publish (``t_publish - t_capture``), the part of the loop that toxrt owns.
    """

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self._latency = TimeRing(LATENCY_WINDOW)
        self._frames_since = 0
        self._since = None  # time of the last status
        self.frames = 0
        self.animals = 0
        self.confidence = float("nan")

    def add(self, t_capture: float, t_publish: float, ids: np.ndarray, p: np.ndarray) -> None:
        self._latency.add(t_publish - t_capture)
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
        p50, p95, p99 = self._latency.percentiles_ms((50, 95, 99))
        snap = {"fps": self._frames_since / elapsed, "latency_ms_p50": p50, "latency_ms_p95": p95,
                "latency_ms_p99": p99, "frames": self.frames, "animals": self.animals,
                "identity_confidence": self.confidence}
        self._since, self._frames_since = now, 0
        return snap


class Publisher:
    """Non-blocking ZeroMQ publisher of ``pos``, ``event`` and ``status`` messages.

    Owned by one thread (ZeroMQ sockets are not thread-safe). ``sent`` and ``dropped`` count
    messages of all topics; see the module docstring for what ``dropped`` means.
    """

    def __init__(self, address: str = DEFAULT_PUBLISH_ADDRESS, fmt: str = DEFAULT_PUBLISH_FORMAT, allow_remote: bool = False,
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
