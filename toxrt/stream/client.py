"""Receiving toxrt's live stream: the position client for stimulus programs (``toxrt listen``: ``listen.py``).

:class:`PositionClient` runs a background thread that drains the SUB socket as messages arrive,
so the latest position of every identity is always at hand (``latest()``) without the stimulus
program having to poll often; a program that is busy for a while never reads a stale backlog.

What the counters mean (the same in ``PositionClient`` and ``toxrt listen``):

``received``  ``pos`` messages accepted.
``missed``    positions lost on the way to *this* client: the gaps in ``seq`` between consecutive
              ``pos`` messages it saw (a full queue on either side, a reconnect). This is the exact
              count; the publisher's own ``dropped_publish`` counts only congestion episodes, one per
              stall however many messages the stall cost. Losses after the last message cannot be seen.
``rejected``  messages that were not readable or not a valid message of their topic (a ``pos``
              without its fields, arrays of unequal length, non-numbers...): counted and skipped,
              the receiving goes on. A rejected ``pos`` with a readable ``seq`` does not count as missed.
``restarts``  times ``seq`` went backwards (the publisher restarted); counting goes on from there.

Quick start::

    from toxrt.stream.client import PositionClient
    with PositionClient("tcp://127.0.0.1:5556") as client:
        client.wait_for_frame(timeout_s=5)
        for identity, pos in client.latest().items():
            print(identity, pos.x, pos.y, f"{pos.age_s() * 1000:.0f} ms old")
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

import zmq

from ..config_checks import DEFAULT_PUBLISH_ADDRESS
from ..errors import ToxrtError
from ..log_limit import WarningLimiter
from .sockets import check_connect_address, connect_subscriber, receive_until
from .wire import TOPIC_EVENT, TOPIC_POS, TOPIC_STATUS, check_position, decode, is_int

log = logging.getLogger(__name__)

POLL_MS = 100  # how often a receiving thread checks for close()


@dataclass(frozen=True)
class AnimalPosition:
    """The last published position of one identity; ``t_capture`` in UNIX seconds."""

    id: int
    x: float  # pixels, origin top-left
    y: float
    heading: float  # main-axis angle, radians
    area: float  # pixels
    status: int  # toxrt.types.Status
    p: float  # identity probability
    frame: int
    t_capture: float

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the frame holding this position was captured."""
        return (time.time() if now is None else now) - self.t_capture


class SeqCounter:
    """Positions lost on the way, from the gaps in ``seq`` (see the module docstring)."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.missed = 0
        self.restarts = 0

    def see(self, seq: Any, valid: bool = True) -> None:
        """Count ``seq`` of a received ``pos``. Of an invalid message only the very next seq is
        taken (so that it is not counted missed too), never a jump: its seq cannot be trusted."""
        if not is_int(seq) or (not valid and seq != (self.last or 0) + 1):
            return
        if self.last is not None:
            if seq > self.last + 1:
                self.missed += seq - self.last - 1
            elif seq <= self.last:
                self.restarts += 1
        self.last = seq


class PositionClient:
    """Latest positions of each identity, received in a background thread.

    ``received``, ``missed``, ``rejected`` and ``restarts`` are described in the module docstring.
    ``events()`` drains the ``event`` messages (the latest ``max_events`` are kept); ``status`` is
    the latest ``status`` message. Whatever arrives, the receiving thread goes on.
    """

    def __init__(self, address: str = DEFAULT_PUBLISH_ADDRESS, max_events: int = 1000,
                 context: zmq.Context | None = None):
        self.address = check_connect_address(address)
        self._context = context or zmq.Context.instance()
        self._socket = connect_subscriber(self._context, address, (TOPIC_POS, TOPIC_EVENT, TOPIC_STATUS))
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._latest: dict[int, AnimalPosition] = {}
        self._last: dict | None = None
        self._events: collections.deque[dict] = collections.deque(maxlen=max_events)
        self.status: dict | None = None
        self.received = self.rejected = 0
        self._seq = SeqCounter()
        self._warnings = WarningLimiter(log)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="toxrt-client", daemon=True)
        self._thread.start()

    # -- receiving thread (owns the socket) -----------------------------------------------------
    def _run(self) -> None:
        receive_until(self._socket, self._stop, self._handle, POLL_MS)

    @property
    def missed(self) -> int:
        return self._seq.missed

    @property
    def restarts(self) -> int:
        return self._seq.restarts

    def _handle(self, parts: list[bytes], t_receive: float) -> None:
        try:
            topic, payload = parts
            message = decode(payload)
            if topic == TOPIC_POS:
                self._check_position(message)
        except Exception as exc:  # noqa: BLE001 - a bad message is counted; the thread goes on
            self.rejected += 1
            self._warnings.warn(f"message rejected ({self.rejected} so far): {str(exc)[:200] or type(exc).__name__}")
            return
        message["t_receive"] = t_receive
        with self._lock:
            if topic == TOPIC_POS:
                self._on_position(message)
                self._new_frame.notify_all()
            elif topic == TOPIC_EVENT:
                self._events.append(message)
            elif topic == TOPIC_STATUS:
                self.status = message

    def _check_position(self, message: dict) -> None:
        try:
            check_position(message)
        except ValueError:
            self._seq.see(message.get("seq"), valid=False)
            raise
        self._seq.see(message["seq"])

    def _on_position(self, message: dict) -> None:
        self.received += 1
        self._last = message
        frame, t_capture = message["frame"], message["t_capture"]
        for row in zip(message["id"], message["x"], message["y"], message["heading"], message["area"],
                       message["status"], message["p"]):
            if row[0] > 0:
                self._latest[row[0]] = AnimalPosition(*row, frame=frame, t_capture=t_capture)

    # -- reading (any thread) -------------------------------------------------------------------
    def latest(self) -> dict[int, AnimalPosition]:
        """The last position of every identity seen so far, by identity (1..N)."""
        with self._lock:
            return dict(self._latest)

    def get(self, identity: int) -> AnimalPosition | None:
        with self._lock:
            return self._latest.get(identity)

    def last_frame(self) -> dict | None:
        """The latest ``pos`` message as decoded, with the local ``t_receive`` added."""
        with self._lock:
            return self._last

    def stream_age_s(self, now: float | None = None) -> float:
        """Seconds since the latest received frame was captured (inf before the first)."""
        with self._lock:
            if self._last is None:
                return float("inf")
            return (time.time() if now is None else now) - self._last["t_capture"]

    def wait_for_frame(self, after_seq: int = -1, timeout_s: float = 5.0) -> dict | None:
        """Block until a ``pos`` message with ``seq > after_seq`` has arrived; None on timeout."""
        with self._new_frame:
            ok = self._new_frame.wait_for(
                lambda: self._last is not None and self._last["seq"] > after_seq, timeout=timeout_s)
            return self._last if ok else None

    def events(self) -> list[dict]:
        """The ``event`` messages received since the last call, oldest first."""
        with self._lock:
            drained = list(self._events)
            self._events.clear()
            return drained

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def __enter__(self) -> "PositionClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MultiCameraClient:
    """Several toxrt processes at once, one per camera: a :class:`PositionClient` per address.

    Everything is kept per camera, named by the ``camera`` field its publisher puts in every
    message (``streaming.camera``; ``toxrt rig`` sets it), or by its address when it has none, so
    identity 1 of one camera never overwrites identity 1 of another and ``seq`` gaps are counted
    per publisher. Example::

        with MultiCameraClient(["tcp://127.0.0.1:5556", "tcp://127.0.0.1:5558"]) as rig:
            rig.wait_for_frames(timeout_s=10)
            for camera, animals in rig.latest().items():
                print(camera, {i: (round(a.x), round(a.y)) for i, a in animals.items()})
    """

    def __init__(self, addresses: Iterable[str], max_events: int = 1000, context: zmq.Context | None = None):
        self.clients: dict[str, PositionClient] = {}  # by address
        try:
            for address in addresses:
                self.clients[address] = PositionClient(address, max_events, context)
        except BaseException:
            self.close()
            raise
        if not self.clients:
            raise ToxrtError("no address to subscribe to")

    def _camera(self, address: str, client: PositionClient) -> str:
        named = client.last_frame() or client.status or {}
        return named.get("camera") or address

    def cameras(self) -> dict[str, str]:
        """Camera name -> address (the address as name until its first message arrives)."""
        return {self._camera(a, c): a for a, c in self.clients.items()}

    def latest(self) -> dict[str, dict[int, AnimalPosition]]:
        """Camera -> the last position of every identity that camera has seen."""
        return {self._camera(a, c): c.latest() for a, c in self.clients.items()}

    def last_frames(self) -> dict[str, dict | None]:
        """Camera -> its latest ``pos`` message (None before the first)."""
        return {self._camera(a, c): c.last_frame() for a, c in self.clients.items()}

    def statuses(self) -> dict[str, dict | None]:
        """Camera -> its latest ``status`` message (None before the first)."""
        return {self._camera(a, c): c.status for a, c in self.clients.items()}

    def counts(self) -> dict[str, dict[str, int]]:
        """Camera -> received, missed and rejected message counts."""
        return {self._camera(a, c): {"received": c.received, "missed": c.missed, "rejected": c.rejected}
                for a, c in self.clients.items()}

    def wait_for_frames(self, timeout_s: float = 5.0) -> bool:
        """Block until every camera has delivered a ``pos`` message; False on timeout."""
        deadline = time.monotonic() + timeout_s
        return all(c.wait_for_frame(timeout_s=max(0.0, deadline - time.monotonic())) is not None
                   for c in self.clients.values())

    def events(self) -> list[dict]:
        """The ``event`` messages of every camera since the last call, each with its ``camera``."""
        drained = []
        for address, client in self.clients.items():
            name = self._camera(address, client)
            drained += [{**event, "camera": event.get("camera") or name} for event in client.events()]
        return sorted(drained, key=lambda e: e.get("t_publish", 0.0))

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def __enter__(self) -> "MultiCameraClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
