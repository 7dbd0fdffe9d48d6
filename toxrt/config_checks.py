"""What a configuration value must be: plain names, ZeroMQ addresses, kinds of video paths, ranges.

The checks ``config.py`` attaches to every key (``option(default, check, why)``), and the checks of
names and addresses that other modules make on values that did not come through a config.
"""
from __future__ import annotations

import unicodedata
from dataclasses import field
from typing import Any

PUBLISH_FORMATS = ("msgpack", "json")
DEFAULT_PUBLISH_FORMAT = PUBLISH_FORMATS[0]
DEFAULT_PUBLISH_ADDRESS = "tcp://127.0.0.1:5556"
DEFAULT_MARKER_ADDRESS = "tcp://127.0.0.1:5557"


def unit_interval(value: float) -> bool:
    return 0.0 <= value <= 1.0


def between(lo: float, hi: float, zero: bool = False, open_lo: bool = False) -> tuple[Any, str]:
    """A range check and its description: lo <= v <= hi (lo < v when ``open_lo``), or v == 0 when ``zero``."""
    def check(value: float) -> bool:
        return (zero and value == 0) or ((lo < value if open_lo else lo <= value) and value <= hi)
    why = f"above {_number(lo)}, up to {_number(hi)}" if open_lo else f"from {_number(lo)} to {_number(hi)}"
    return check, (f"0 or {why}" if zero else why)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def control_characters(text: str) -> list[str]:
    """The control, format and line-separator characters of ``text`` (they have no place in names)."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a session folder (``session_<name>``), or None when it can."""
    if control_characters(name):
        return f"contains the control character {control_characters(name)[0]!r}"
    if "/" in name or "\\" in name or name in (".", ".."):
        return "is a name, not a path (no '/', '\\', '.' or '..')"
    if len(name.encode("utf-8", "surrogatepass")) > 200:
        return "is longer than 200 bytes"
    return None


def zmq_address_problem(address: str) -> str | None:
    """Why ``address`` is not a usable ZeroMQ endpoint (tcp://host:port, ipc://path, inproc://name), or None."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
        return f"is not a ZeroMQ address such as {DEFAULT_PUBLISH_ADDRESS}"
    if control_characters(address):
        return "contains a control character"
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            return f"needs a host and a port ({DEFAULT_PUBLISH_ADDRESS})"
        if port != "*" and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            return f"has port {port!r}; a port is 1..65535 or * (any free port)"
    return None


def is_live_spec(spec: str) -> bool:
    """A ``video_paths`` entry that is a camera (``camera:N``) or a network stream (``scheme://...``)."""
    return spec.startswith("camera:") or "://" in spec


def is_file_spec(spec: str) -> bool:
    """A ``video_paths`` entry that names a file, a folder or a pattern (not ``sim:``, a camera or a stream)."""
    return not (spec.startswith("sim:") or is_live_spec(spec))


def option(default: Any, check=None, why: str = "") -> Any:
    """A dataclass field with a default and an optional range check (value -> bool)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"check": check, "why": why})
    return field(default=default, metadata={"check": check, "why": why})


def auto_or_between(lo: float, hi: float) -> tuple[Any, str]:
    """-1 (auto) or lo <= v <= hi."""
    check, why = between(lo, hi)
    return (lambda value: value == -1 or check(value)), f"-1 (auto) or {why}"
