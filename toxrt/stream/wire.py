"""toxrt's wire format, schema version 1 (``docs/streaming.md``): pure encoders and checks, no sockets.

Every message is two frames, ``[topic, payload]``; the payload is one msgpack map (default) or one
UTF-8 JSON object. Topics:

``pos``     one per frame: ``v, frame, seq, t_capture, t_publish, n`` and, per row, the equal-length
            arrays ``id, fragment, x, y, heading, area, status, p``.
``event``   ``v, type, frame, t_publish`` and the event's own fields (identity revisions, fragment
            start and end, markers, frames dropped, source lost or regained): the event dict as
            recorded in events.jsonl.
``status``  about once per second: frame rate, latency percentiles, drops, animals, confidence.

``status`` values are the integers of :class:`toxrt.types.Status`: 0 measured, 1 predicted,
2 crossing (``toxrt.types.STATUS_NAMES``).
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

import msgpack
import numpy as np

from ..config_checks import DEFAULT_PUBLISH_FORMAT, PUBLISH_FORMATS
from ..errors import ToxrtError
from ..types import IdentityEvent, event_dict

SCHEMA_VERSION = 1
TOPIC_POS = b"pos"
TOPIC_EVENT = b"event"
TOPIC_STATUS = b"status"


def check_format(fmt: str, key: str = "publish_format") -> str:
    if fmt not in PUBLISH_FORMATS:
        raise ToxrtError(f"{key}: unknown format {fmt!r}; use one of {PUBLISH_FORMATS}")
    return fmt


def encode(message: Mapping[str, Any], fmt: str = DEFAULT_PUBLISH_FORMAT, camera: str = "") -> bytes:
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
                     fragment: np.ndarray | None = None, fmt: str = DEFAULT_PUBLISH_FORMAT, camera: str = "") -> bytes:
    """The ``pos`` payload of one frame (see :func:`position_message` for the arrays)."""
    return encode(position_message(frame, seq, t_capture, t_publish, ids, x, y, heading, area,
                                   status, p, fragment), fmt, camera)


def event_message(event: IdentityEvent | Mapping[str, Any], t_publish: float) -> dict:
    """The ``event`` map: the event as events.jsonl holds it (``types.event_dict``), versioned and stamped."""
    return {"v": SCHEMA_VERSION, **event_dict(event), "t_publish": float(t_publish)}


_POSITION_ARRAYS = ("id", "x", "y", "heading", "area", "status", "p")


def is_int(value: Any) -> bool:
    return type(value) is int


def is_number(value: Any) -> bool:
    return type(value) in (int, float)


def check_position(message: dict) -> None:
    """Raise ValueError unless ``message`` is a usable ``pos`` map (see docs/streaming.md)."""
    for key in ("frame", "seq"):
        if not is_int(message.get(key)):
            raise ValueError(f"pos: {key!r} must be an integer, got {message.get(key)!r:.40}")
    if not is_number(message.get("t_capture")):
        raise ValueError(f"pos: 't_capture' must be a number, got {message.get('t_capture')!r:.40}")
    arrays = [message.get(key) for key in _POSITION_ARRAYS]
    if not all(type(a) is list for a in arrays) or len({len(a) for a in arrays}) != 1:
        raise ValueError(f"pos: {', '.join(_POSITION_ARRAYS)} must be lists of one length")
    ints = ("id", "status")
    for key, values in zip(_POSITION_ARRAYS, arrays):
        if not all(map(is_int if key in ints else is_number, values)):
            raise ValueError(f"pos: {key!r} holds a value that is not {'an integer' if key in ints else 'a number'}")
    fragment = message.get("fragment")
    if fragment is not None and (type(fragment) is not list or len(fragment) != len(arrays[0])
                                 or not all(map(is_int, fragment))):
        raise ValueError("pos: 'fragment' must be a list of integers, one per blob")
