"""Cameras and network streams, grabbed in a thread (``threaded.py``), reconnecting when lost.

A camera or stream that stops delivering is released and reopened with exponential back-off,
forever by default (``reconnect_timeout_s``), so a loose cable does not end the session. Its
status events (``source_lost``, ``source_regained``, ``frames_dropped``) are described in
``threaded.py``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

import cv2
import numpy as np

from ..errors import SourceError
from .protocol import to_grey
from .threaded import DEFAULT_LIVE_FPS, ThreadedSource

log = logging.getLogger(__name__)

DEFAULT_OPEN_TIMEOUT_S = 3.0
DEFAULT_READ_TIMEOUT_S = 3.0


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` a capture source uses (fakes in tests follow it too)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop: int) -> float: ...

    def release(self) -> None: ...


def parse_live_spec(spec: str) -> tuple[str, int | str]:
    """``camera:N`` -> ("camera", N); ``scheme://...`` -> ("url", spec); else SourceError."""
    if spec.startswith("camera:"):
        text = spec[len("camera:"):]
        if not text.isdigit():
            raise SourceError(f"video_paths: {spec!r}: a camera is camera:N with N the device index (camera:0)")
        return "camera", int(text)
    if "://" in spec:
        return "url", spec
    raise SourceError(f"video_paths: {spec!r} is neither camera:N nor a stream URL")


def open_capture(spec: str, open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture`` for ``camera:N`` or a stream URL, or SourceError.

    Streams go through FFmpeg with open and read timeouts, so an unreachable URL fails in about
    ``open_timeout_s`` and a stalled stream returns a failed read instead of hanging. Cameras use
    the platform backend, which fails at once for a missing device.
    """
    kind, target = parse_live_spec(spec)
    if kind == "camera":
        capture = cv2.VideoCapture(int(target))
    else:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
        capture = cv2.VideoCapture(str(target), cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        capture.release()
        if kind == "camera":
            raise SourceError(f"video_paths: {spec}: no camera with index {target} (or it is in use)")
        raise SourceError(f"video_paths: {spec}: cannot open the stream within {open_timeout_s:g} s "
                          f"(unreachable, wrong URL, or nothing being sent)")
    return capture


class CaptureSource(ThreadedSource):
    """A camera or stream read by a grabbing thread that reconnects with back-off.

    ``opener()`` returns an opened :class:`Capture` or raises SourceError; it is called once here
    (errors reach the caller at once, as does a capture that delivers no first frame) and again
    after each failure. Back-off between attempts doubles from ``backoff_initial_s`` up to
    ``backoff_max_s``; after ``reconnect_timeout_s`` without a frame (None: never) the iteration
    ends with SourceError.
    """

    def __init__(self, opener: Callable[[], Capture], description: str, fps: float = 0.0,
                 on_event: Callable[[dict], Any] | None = None, backoff_initial_s: float = 0.25,
                 backoff_max_s: float = 5.0, reconnect_timeout_s: float | None = None):
        super().__init__(description, on_event)
        self._opener = opener
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self.reconnects = 0
        self._capture = opener()
        ok, image = self._read()
        if not ok:
            self._capture.release()
            raise SourceError(f"video_paths: {description}: opened, but no frame arrived")
        first = to_grey(image)
        self.height, self.width = first.shape
        reported = float(self._capture.get(cv2.CAP_PROP_FPS))
        self.fps = fps or (reported if 0 < reported < 1000 else DEFAULT_LIVE_FPS)
        self._index = 0
        self._put(0, time.time(), first)
        self._start(self._grab, f"toxrt-grab-{description}")

    def _read(self) -> tuple[bool, np.ndarray | None]:
        try:
            ok, image = self._capture.read()
        except Exception as exc:  # cv2 raises for some driver errors: treat like a failed read
            log.warning("%s: read failed: %s", self.description, exc)
            return False, None
        return bool(ok) and image is not None, image

    def _grab(self) -> None:
        while not self._stop.is_set():
            ok, image = self._read()
            if not ok:
                if not self._reconnect():
                    return
                continue
            t_capture = time.time()
            self._index += 1
            self._put(self._index, t_capture, to_grey(image))

    def _reconnect(self) -> bool:
        """Reopen until a frame arrives; False when closed. Raises SourceError past the timeout."""
        self._capture.release()
        lost_at = time.monotonic()
        log.warning("%s: lost after frame %d; reconnecting", self.description, self._index)
        self._event("source_lost", frame=self._index)
        delay, attempts = self.backoff_initial_s, 0
        while not self._stop.wait(delay):
            attempts += 1
            try:
                self._capture = self._opener()
            except SourceError as exc:
                log.info("%s: reconnect attempt %d failed: %s", self.description, attempts, exc)
            else:
                ok, image = self._read()
                if ok:
                    self.reconnects += 1
                    down_s = time.monotonic() - lost_at
                    log.warning("%s: regained after %.1f s (%d attempts)", self.description, down_s, attempts)
                    self._event("source_regained", frame=self._index + 1, attempts=attempts, down_s=down_s)
                    self._index += 1
                    self._put(self._index, time.time(), to_grey(image))
                    return True
                self._capture.release()
            if self.reconnect_timeout_s is not None and time.monotonic() - lost_at > self.reconnect_timeout_s:
                raise SourceError(f"{self.description}: lost for more than {self.reconnect_timeout_s:g} s; giving up")
            delay = min(delay * 2, self.backoff_max_s)
        return False

    def close(self) -> None:
        super().close()
        self._capture.release()


def open_live_source(spec: str, fps: float = 0.0, open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
                     read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                     on_event: Callable[[dict], Any] | None = None, **reconnect: Any) -> CaptureSource:
    """A :class:`CaptureSource` for ``camera:N`` or a stream URL; ``fps`` (0: as the device
    reports) overrides the rate the device reports."""
    parse_live_spec(spec)
    return CaptureSource(lambda: open_capture(spec, open_timeout_s, read_timeout_s), spec, fps=fps,
                         on_event=on_event, **reconnect)
