"""``toxrt listen``: the live stream as a table of animals in the terminal, optionally into a CSV.

The counters (received, missed, rejected) mean what they mean for :class:`~toxrt.stream.client.PositionClient`.
"""
from __future__ import annotations

import csv
import logging
import sys
import time
from typing import Any, Sequence, TextIO

import zmq

from ..config_checks import DEFAULT_PUBLISH_ADDRESS
from ..errors import ToxrtError
from ..log_limit import WarningLimiter
from ..types import STATUS_NAMES
from .client import POLL_MS, SeqCounter
from .sockets import check_connect_address, connect_subscriber
from .wire import TOPIC_EVENT, TOPIC_POS, TOPIC_STATUS, check_position, decode, is_number

log = logging.getLogger(__name__)

CSV_COLUMNS = ("frame", "seq", "t_capture", "t_publish", "t_receive", "id", "fragment", "x", "y",
               "heading", "area", "status", "p", "camera")


def _status_number(status: dict, key: str) -> float:
    value = status.get(key)
    return float(value) if is_number(value) else float("nan")


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


def listen(address: str | Sequence[str] = DEFAULT_PUBLISH_ADDRESS, csv_path: str | None = None, duration_s: float | None = None,
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
        check_connect_address(one)
    socket = connect_subscriber(context or zmq.Context.instance(), address, (TOPIC_POS, TOPIC_EVENT, TOPIC_STATUS))
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
            if not socket.poll(POLL_MS, zmq.POLLIN):
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
