"""Receiving toxrt's live stream: a position client for stimulus programs and ``toxrt listen``.

:class:`PositionClient` runs a background thread that drains the SUB socket as messages arrive,
so the latest position of every identity is always at hand (``latest()``) without the stimulus
program having to poll often; a program that is busy for a while never reads a stale backlog.
Gaps in ``seq`` count messages this client missed.

Quick start::

    from toxrt.client import PositionClient
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

from .errors import ToxrtError
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
    if "://" not in address:
        raise ToxrtError(f"address {address!r} is not a ZeroMQ address (e.g. {DEFAULT_ADDRESS})")
    return address


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

    ``received`` counts ``pos`` messages, ``missed`` the gaps in their ``seq`` (messages dropped on
    the way), ``rejected`` payloads that could not be decoded. ``events()`` drains the ``event``
    messages (the latest ``max_events`` are kept); ``status`` is the latest ``status`` message.
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
        self.received = self.missed = self.rejected = 0
        self._last_seq: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="toxrt-client", daemon=True)
        self._thread.start()

    # -- receiving thread (owns the socket) -----------------------------------------------------
    def _run(self) -> None:
        receive_until(self._socket, self._stop, self._handle, _POLL_MS)

    def _handle(self, parts: list[bytes], t_receive: float) -> None:
        try:
            topic, payload = parts
            message = decode(payload)
        except ValueError:
            self.rejected += 1
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

    def _on_position(self, message: dict) -> None:
        seq = message.get("seq", 0)
        if self._last_seq is not None and seq > self._last_seq + 1:
            self.missed += seq - self._last_seq - 1
        self._last_seq = seq  # a smaller seq means the publisher restarted: start counting again
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

def format_table(message: dict, status: dict | None, missed: int, now: float) -> str:
    """A text table of one ``pos`` message: one line per blob, identified animals first."""
    age_ms = (now - message["t_capture"]) * 1000.0
    head = f"frame {message['frame']:>7}  seq {message['seq']:>7}  age {age_ms:7.1f} ms  missed {missed}"
    if message.get("camera"):
        head = f"camera {message['camera']}  {head}"
    if status:
        head += (f"  |  {status.get('fps', float('nan')):5.1f} fps  latency p50 "
                 f"{status.get('latency_ms_p50', float('nan')):.1f} ms  dropped "
                 f"{status.get('dropped_publish', 0)}+{status.get('dropped_source', 0)}")
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
    Returns counts: frames, missed, events, rejected. Several addresses (one toxrt process per
    camera) are received together: one table per camera, told apart by each message's ``camera``
    field (``streaming.camera``), which must then differ between the publishers.
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
    status: dict[str, dict] = {}  # per camera, as are the latest pos and seq
    latest: dict[str, dict] = {}
    last_seq: dict[str, int] = {}
    last_shown = 0.0
    deadline = None if duration_s is None else time.monotonic() + duration_s
    out.write(f"listening on {', '.join(addresses)} (Ctrl-C to stop)\n")
    out.flush()
    try:
        while (deadline is None or time.monotonic() < deadline) and (max_frames is None or counts["frames"] < max_frames):
            if not socket.poll(_POLL_MS, zmq.POLLIN):
                continue
            topic, payload, *_ = socket.recv_multipart() + [b""]
            t_receive = time.time()
            try:
                message = decode(payload)
            except ValueError:
                counts["rejected"] += 1
                continue
            camera = message.get("camera", "")
            if topic == TOPIC_STATUS:
                status[camera] = message
            elif topic == TOPIC_EVENT:
                counts["events"] += 1
                out.write(f"event {message.get('type')}: "
                          f"{ {k: v for k, v in message.items() if k not in ('v', 'type')} }\n")
            elif topic == TOPIC_POS:
                seq = message["seq"]
                if camera in last_seq and seq > last_seq[camera] + 1:
                    counts["missed"] += seq - last_seq[camera] - 1
                last_seq[camera] = seq
                latest[camera] = message
                counts["frames"] += 1
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
    out.write(f"received {counts['frames']} frames, missed {counts['missed']}, "
              f"{counts['events']} events, {counts['rejected']} unreadable\n")
    return counts


def _write_rows(writer: Any, message: dict, t_receive: float) -> None:
    head = (message["frame"], message["seq"], message["t_capture"], message["t_publish"], t_receive)
    n = len(message["id"])
    fragments = message.get("fragment") or [0] * n
    camera = (message.get("camera", ""),)
    writer.writerows(head + row + camera for row in zip(message["id"], fragments, message["x"], message["y"],
                                                         message["heading"], message["area"], message["status"],
                                                         message["p"]))
