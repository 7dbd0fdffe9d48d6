"""Receiving toxrt's live stream: a position client for stimulus programs and ``toxrt listen``.

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
import csv
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, TextIO

import zmq

from ..config import zmq_address_problem
from ..errors import ToxrtError
from ..log_limit import WarningLimiter
from .publish import DEFAULT_ADDRESS, STATUS_NAMES, TOPIC_EVENT, TOPIC_POS, TOPIC_STATUS, decode, receive_until

log = logging.getLogger(__name__)

_POLL_MS = 100  # how often the receiving thread checks for close()
CSV_COLUMNS = ("frame", "seq", "t_capture", "t_publish", "t_receive", "id", "fragment", "x", "y",
               "heading", "area", "status", "p", "camera")


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


def _check_connect_address(address: str) -> str:
    problem = zmq_address_problem(address)
    if problem:
        raise ToxrtError(f"address {address!r} {problem}")
    return address


_POSITION_ARRAYS = ("id", "x", "y", "heading", "area", "status", "p")


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def check_position(message: dict) -> None:
    """Raise ValueError unless ``message`` is a usable ``pos`` map (see docs/streaming.md)."""
    for key in ("frame", "seq"):
        if not _is_int(message.get(key)):
            raise ValueError(f"pos: {key!r} must be an integer, got {message.get(key)!r:.40}")
    if not _is_number(message.get("t_capture")):
        raise ValueError(f"pos: 't_capture' must be a number, got {message.get('t_capture')!r:.40}")
    arrays = [message.get(key) for key in _POSITION_ARRAYS]
    if not all(type(a) is list for a in arrays) or len({len(a) for a in arrays}) != 1:
        raise ValueError(f"pos: {', '.join(_POSITION_ARRAYS)} must be lists of one length")
    ints = ("id", "status")
    for key, values in zip(_POSITION_ARRAYS, arrays):
        if not all(map(_is_int if key in ints else _is_number, values)):
            raise ValueError(f"pos: {key!r} holds a value that is not {'an integer' if key in ints else 'a number'}")
    fragment = message.get("fragment")
    if fragment is not None and (type(fragment) is not list or len(fragment) != len(arrays[0])
                                 or not all(map(_is_int, fragment))):
        raise ValueError("pos: 'fragment' must be a list of integers, one per blob")


class SeqCounter:
    """Positions lost on the way, from the gaps in ``seq`` (see the module docstring)."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.missed = 0
        self.restarts = 0

    def see(self, seq: Any, valid: bool = True) -> None:
        """Count ``seq`` of a received ``pos``. Of an invalid message only the very next seq is
        taken (so that it is not counted missed too), never a jump: its seq cannot be trusted."""
        if not _is_int(seq) or (not valid and seq != (self.last or 0) + 1):
            return
        if self.last is not None:
            if seq > self.last + 1:
                self.missed += seq - self.last - 1
            elif seq <= self.last:
                self.restarts += 1
        self.last = seq


def _subscriber(context: zmq.Context, address: str | Sequence[str], topics: Iterable[bytes]) -> zmq.Socket:
    """A SUB socket connected to one address or to several (one publisher per camera)."""
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    for topic in topics:
        socket.setsockopt(zmq.SUBSCRIBE, topic)
    for one in [address] if isinstance(address, str) else address:
        try:
            socket.connect(one)
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise ToxrtError(f"cannot connect to {one}: {exc.strerror}") from None
    return socket


class PositionClient:
    """Latest positions of each identity, received in a background thread.

    ``received``, ``missed``, ``rejected`` and ``restarts`` are described in the module docstring.
    ``events()`` drains the ``event`` messages (the latest ``max_events`` are kept); ``status`` is
    the latest ``status`` message. Whatever arrives, the receiving thread goes on.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, max_events: int = 1000,
                 context: zmq.Context | None = None):
        self.address = _check_connect_address(address)
        self._context = context or zmq.Context.instance()
        self._socket = _subscriber(self._context, address, (TOPIC_POS, TOPIC_EVENT, TOPIC_STATUS))
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
        receive_until(self._socket, self._stop, self._handle, _POLL_MS)

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


# ---------------------------------------------------------------------------------------------
# toxrt listen
# ---------------------------------------------------------------------------------------------

def _status_number(status: dict, key: str) -> float:
    value = status.get(key)
    return float(value) if _is_number(value) else float("nan")


def format_table(message: dict, status: dict | None, missed: int, now: float) -> str:
    """A text table of one ``pos`` message (checked by ``check_position``): one line per blob,
    identified animals first. ``missed``: positions this client lost (seq gaps)."""
    age_ms = (now - message["t_capture"]) * 1000.0
    head = f"frame {message['frame']:>7}  seq {message['seq']:>7}  age {age_ms:7.1f} ms  lost {missed}"
    if message.get("camera"):
        head = f"camera {message['camera']}  {head}"
    if status:
        head += (f"  |  {_status_number(status, 'fps'):5.1f} fps  latency p50 "
                 f"{_status_number(status, 'latency_ms_p50'):.1f} ms  source dropped "
                 f"{_status_number(status, 'dropped_source'):.0f} frames")
    lines = [head, f"{'id':>4} {'x':>8} {'y':>8} {'heading':>8} {'area':>7} {'status':>10} {'p':>5}"]
    rows = sorted(zip(message["id"], message["x"], message["y"], message["heading"], message["area"],
                      message["status"], message["p"]), key=lambda r: (r[0] == 0, r[0]))
    for ident, x, y, heading, area, status_code, p in rows:
        name = STATUS_NAMES.get(status_code, str(status_code))
        shown = str(ident) if ident > 0 else "-"
        lines.append(f"{shown:>4} {x:8.1f} {y:8.1f} {heading:8.2f} {area:7.0f} {name:>10} {p:5.2f}")
    return "\n".join(lines)


def listen(address: str | Sequence[str] = DEFAULT_ADDRESS, csv_path: str | None = None, duration_s: float | None = None,
           max_frames: int | None = None, out: TextIO | None = None, refresh_s: float = 0.5,
           context: zmq.Context | None = None) -> dict[str, Any]:
    """Print the live stream as a table of animals (at most every ``refresh_s``), optionally
    writing every received position to ``csv_path`` (columns ``CSV_COLUMNS``, one row per blob).

    Runs until ``duration_s`` has passed, ``max_frames`` ``pos`` messages arrived, or Ctrl-C.
    Returns counts: frames (``pos`` received), missed, events, rejected (see the module docstring).
    Several addresses (one toxrt process per camera) are received together: one table per camera,
    told apart by each message's ``camera`` field (``streaming.camera``), and ``seq`` gaps are
    counted per camera, so the publishers' camera names must differ.
    """
    out = out or sys.stdout
    addresses = [address] if isinstance(address, str) else list(address)
    for one in addresses:
        _check_connect_address(one)
    socket = _subscriber(context or zmq.Context.instance(), address, (TOPIC_POS, TOPIC_EVENT, TOPIC_STATUS))
    clear = "\x1b[H\x1b[J" if getattr(out, "isatty", lambda: False)() else ""
    handle = writer = None
    if csv_path:
        try:
            handle = open(csv_path, "w", newline="")
        except OSError as exc:
            socket.close(linger=0)
            raise ToxrtError(f"--csv {csv_path}: cannot write: {exc.strerror}") from None
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
    counts = {"frames": 0, "missed": 0, "events": 0, "rejected": 0}
    status: dict[str, dict] = {}  # per camera, as are the latest pos and the seq counters
    latest: dict[str, dict] = {}
    seqs: dict[str, SeqCounter] = {}
    warnings = WarningLimiter(log)
    last_shown = 0.0
    deadline = None if duration_s is None else time.monotonic() + duration_s
    out.write(f"listening on {', '.join(addresses)} (Ctrl-C to stop)\n")
    out.flush()
    try:
        while (deadline is None or time.monotonic() < deadline) and (max_frames is None or counts["frames"] < max_frames):
            if not socket.poll(_POLL_MS, zmq.POLLIN):
                continue
            parts = socket.recv_multipart()
            t_receive = time.time()
            try:
                if len(parts) != 2:
                    raise ValueError(f"expected [topic, payload], got {len(parts)} frames")
                topic, payload = parts
                message = decode(payload)
                camera = str(message.get("camera", "")) if isinstance(message, dict) else ""
                seq = seqs.setdefault(camera, SeqCounter())
                if topic == TOPIC_POS:
                    try:
                        check_position(message)
                    except ValueError:
                        seq.see(message.get("seq"), valid=False)
                        raise
                    seq.see(message["seq"])
            except ValueError as exc:
                counts["missed"] = sum(c.missed for c in seqs.values())
                counts["rejected"] += 1
                warnings.warn(f"message rejected ({counts['rejected']} so far): {str(exc)[:200]}")
                continue
            if topic == TOPIC_STATUS:
                status[camera] = message
            elif topic == TOPIC_EVENT:
                counts["events"] += 1
                out.write(f"event {str(message.get('type'))[:40]!r}: "
                          f"{ {k: v for k, v in message.items() if k not in ('v', 'type')} !r:.500}\n")
            elif topic == TOPIC_POS:
                latest[camera] = message
                counts["frames"] += 1
                counts["missed"] = sum(c.missed for c in seqs.values())
                if writer is not None:
                    _write_rows(writer, message, t_receive)
                if t_receive - last_shown >= refresh_s:
                    last_shown = t_receive
                    tables = (format_table(latest[c], status.get(c), counts["missed"], t_receive) for c in sorted(latest))
                    out.write(clear + "\n\n".join(tables) + "\n\n")
                    out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        socket.close(linger=0)
        if handle is not None:
            handle.close()
    out.write(f"received {counts['frames']} frames, lost {counts['missed']} on the way (gaps in seq), "
              f"{counts['events']} events, {counts['rejected']} rejected\n")
    return counts


def _write_rows(writer: Any, message: dict, t_receive: float) -> None:
    head = (message["frame"], message["seq"], message["t_capture"], message["t_publish"], t_receive)
    n = len(message["id"])
    fragments = message.get("fragment") or [0] * n
    camera = (message.get("camera", ""),)
    writer.writerows(head + row + camera for row in zip(message["id"], fragments, message["x"], message["y"],
                                                         message["heading"], message["area"], message["status"],
                                                         message["p"]))
