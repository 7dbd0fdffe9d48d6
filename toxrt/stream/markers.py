"""Event markers from a stimulus program into the tracking session.

The session binds a PULL socket (loopback by default, ``tcp://127.0.0.1:5557``); stimulus programs
PUSH markers to it. A marker is one msgpack map or JSON object with at least ``label`` (a non-empty
string), optionally ``t_sent`` (UNIX seconds, from the sender's clock) and ``payload`` (a map);
any other top-level keys are folded into ``payload``. Payload values are plain: numbers, strings,
booleans, nil, lists and maps with string keys, nested at most ``MAX_MARKER_DEPTH`` deep, in a
message of at most ``MAX_MARKER_BYTES``. A background thread receives them and stamps each with
its arrival time; the pipeline calls :meth:`MarkerReceiver.drain` once per frame and records what
it gets at that frame. Anything else (msgpack ``bin`` or extension values such as Timestamps, JSON
nested thousands deep, oversized messages) is counted in ``rejected`` and logged, rate-limited,
never raised: no marker can end the session or stop the marker channel.

Sending::

    from toxrt.stream.markers import MarkerSender
    with MarkerSender("tcp://127.0.0.1:5557") as markers:
        markers.send("stimulus_on", zone=2)
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import zmq

from ..config_checks import DEFAULT_MARKER_ADDRESS, DEFAULT_PUBLISH_FORMAT, zmq_address_problem
from ..errors import ToxrtError
from ..log_limit import WarningLimiter
from .sockets import bind_socket, receive_until
from .wire import check_format, decode, encode

log = logging.getLogger(__name__)

_POLL_MS = 100  # how often the receiving thread checks for close()
MAX_MARKER_BYTES = 64 * 1024  # a marker is a label and a few values; bigger is a mistake
MAX_MARKER_DEPTH = 16  # lists and maps inside the payload
# Bigger messages are received and counted as too large; beyond this ZeroMQ itself drops the
# sender's connection before toxrt sees the message, so those cannot be counted.
SOCKET_MAX_BYTES = 16 * 1024 * 1024


def _check_plain(value: Any, depth: int, where: str) -> None:
    """Raise ValueError unless ``value`` is plain data that events.jsonl can hold as it is."""
    if value is None or type(value) in (bool, int, float, str):
        return
    if depth >= MAX_MARKER_DEPTH:
        raise ValueError(f"{where} is nested deeper than {MAX_MARKER_DEPTH} levels")
    if type(value) is list:
        for item in value:
            _check_plain(item, depth + 1, where)
    elif type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ValueError(f"{where} has a {type(key).__name__} key; keys must be strings")
            _check_plain(item, depth + 1, where)
    else:
        raise ValueError(f"{where} holds a {type(value).__name__} value; only numbers, strings, booleans, "
                         "nil, lists and maps are accepted")


def parse_marker(payload: bytes, t_arrival: float) -> dict:
    """A received marker as ``{"label", "t_sent", "t_arrival", "payload"}``; ValueError if malformed.

    ``t_sent`` is None when the sender gave none; ``t_arrival`` is this machine's UNIX time.
    """
    if len(payload) > MAX_MARKER_BYTES:
        raise ValueError(f"marker of {len(payload)} bytes is larger than {MAX_MARKER_BYTES}")
    message = decode(payload)
    label = message.pop("label", None)
    if not isinstance(label, str) or not label:
        raise ValueError("a marker needs a non-empty string 'label'")
    t_sent = message.pop("t_sent", None)
    if t_sent is not None:
        if type(t_sent) not in (int, float) or not -1e12 < t_sent < 1e12:  # also refuses nan and inf
            raise ValueError(f"t_sent must be a number of UNIX seconds, got {t_sent!r:.40}")
        t_sent = float(t_sent)
    payload_map = message.pop("payload", {})
    if type(payload_map) is not dict:
        raise ValueError(f"payload must be a map, got {type(payload_map).__name__}")
    fields = {**message, **payload_map}
    _check_plain(fields, 0, "payload")
    return {"label": label, "t_sent": t_sent, "t_arrival": t_arrival, "payload": fields}


class MarkerReceiver:
    """A bound PULL socket drained by a background thread into a bounded queue.

    ``received`` counts accepted markers; ``rejected`` every message refused (malformed, not plain
    data, too large), of which ``too_large`` were over ``MAX_MARKER_BYTES``; ``overflow`` markers
    lost because ``drain()`` was not called for ``max_pending`` markers. Messages over
    ``SOCKET_MAX_BYTES`` never reach toxrt (ZeroMQ drops the sender's connection) and are not counted.
    """

    def __init__(self, address: str = DEFAULT_MARKER_ADDRESS, allow_remote: bool = False,
                 max_pending: int = 10000, context: zmq.Context | None = None,
                 key: str = "streaming.marker_address", clock=time.monotonic):
        self.address = address
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, SOCKET_MAX_BYTES)
        self.address = bind_socket(self._socket, address, allow_remote, key)
        self._pending: collections.deque[dict] = collections.deque()
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self.received = self.rejected = self.too_large = self.overflow = 0
        self._warnings = WarningLimiter(log, clock=clock)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="toxrt-markers", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        receive_until(self._socket, self._stop, self._accept, _POLL_MS)

    def _accept(self, parts: list[bytes], t_arrival: float) -> None:
        try:
            if len(parts) != 1:
                raise ValueError(f"expected one message frame, got {len(parts)}")
            if len(parts[0]) > MAX_MARKER_BYTES:
                self.too_large += 1
            marker = parse_marker(parts[0], t_arrival)
        except Exception as exc:  # noqa: BLE001 - whatever a sender sends, the channel stays open
            self.rejected += 1
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            self._warnings.warn(f"marker rejected ({self.rejected} so far): {reason}")
            return
        with self._lock:
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self.overflow += 1
            self._pending.append(marker)
            self.received += 1

    def drain(self) -> list[dict]:
        """The markers that arrived since the last call, oldest first (cheap when there are none)."""
        if not self._pending:
            return []
        with self._lock:
            drained = list(self._pending)
            self._pending.clear()
        return drained

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def __enter__(self) -> "MarkerReceiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MarkerSender:
    """A PUSH socket connected to a session's marker address, for a stimulus program.

    ``send`` stamps ``t_sent`` with ``time.time()`` and never blocks: a marker that cannot be queued
    (no session for ``hwm`` markers) is counted in ``dropped`` and False is returned.
    """

    def __init__(self, address: str = DEFAULT_MARKER_ADDRESS, fmt: str = DEFAULT_PUBLISH_FORMAT, hwm: int = 1000,
                 linger_s: float = 1.0, context: zmq.Context | None = None):
        problem = zmq_address_problem(address)
        if problem:
            raise ToxrtError(f"marker address {address!r} {problem}")
        self.fmt = check_format(fmt, "marker format")
        # An own context, terminated on close: that is what waits for queued markers to leave
        # (pyzmq never terminates contexts at interpreter exit, so they would be dropped).
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.LINGER, int(linger_s * 1000))  # lets the last markers go out on close
        try:
            self._socket.connect(address)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            if self._own_context:
                self._context.term()
            raise ToxrtError(f"cannot connect to {address}: {exc.strerror}") from None
        self.sent = self.dropped = 0

    def send(self, label: str, t_sent: float | None = None, **payload: Any) -> bool:
        """Send a marker; ``payload`` values must be plain (numbers, strings, lists, maps)."""
        message = {"label": label, "t_sent": time.time() if t_sent is None else t_sent, "payload": payload}
        try:
            self._socket.send(encode(message, self.fmt), zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        """Close; waits up to ``linger_s`` for queued markers to leave (with its own context)."""
        if self._socket.closed:
            return
        self._socket.close()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> "MarkerSender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def send_marker(address: str, label: str, **payload: Any) -> bool:
    """Send one marker and close (waits up to 1 s for it to leave); for scripts that send few.

    A program that sends many markers keeps a :class:`MarkerSender` open instead: connecting
    costs a TCP handshake per marker.
    """
    with MarkerSender(address) as sender:
        return sender.send(label, **payload)
