"""Live sources: cameras, network streams, and real-time replay of any frame iterator.

All follow :class:`toxrt.sources.files.FrameSource`. Frames are grabbed in a thread of their own into a
one-frame slot: when tracking falls behind, the newest frame replaces the waiting one (the tracker
always works on the present, as with a camera) and every replaced frame is counted in ``dropped``.
Frame indices count every grabbed frame, so a dropped frame leaves a gap in the indices that the
consumer sees; ``Frame.time_s`` is the capture time in UNIX seconds (``time.time()`` at grab).

Status events are plain dicts with a ``type`` (as in a session's ``events.jsonl`` and the ``event``
topic): ``source_lost``, ``source_regained`` and ``frames_dropped``. They are queued for
``drain_events()`` and, if given, passed to ``on_event`` (called from the grabbing thread, so it
must be quick and thread-safe).

A camera or stream that stops delivering is released and reopened with exponential back-off,
forever by default (``reconnect_timeout_s``), so a loose cable does not end the session.
"""
from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Protocol

import cv2
import numpy as np

from ..errors import SourceError
from .files import to_grey
from ..types import Frame

log = logging.getLogger(__name__)

DEFAULT_OPEN_TIMEOUT_S = 3.0
DEFAULT_READ_TIMEOUT_S = 3.0
DEFAULT_LIVE_FPS = 25.0  # when a camera or stream does not report its rate
_WAKE_S = 0.2  # how often waiting threads look at the closed flag
_MAX_EVENTS = 1000
_DROP_EVENT_INTERVAL_S = 1.0  # frames_dropped events are grouped over this interval


class Capture(Protocol):
    """The part of ``cv2.VideoCapture`` a capture source uses (fakes in tests follow it too)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


def is_live_spec(spec: str) -> bool:
    return spec.startswith("camera:") or "://" in spec


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


class _ThreadedSource:
    """The one-frame slot shared by the grabbing thread (``_put``) and the consumer (``__iter__``)."""

    def __init__(self, description: str, on_event: Callable[[dict], Any] | None):
        self.description = description
        self.n_frames: int | None = None
        self.stopped_early_at: int | None = None
        self.fps = DEFAULT_LIVE_FPS
        self.width = self.height = 0
        self.grabbed = 0  # frames put into the slot
        self.delivered = 0  # frames handed to the consumer
        self.dropped = 0  # frames replaced in the slot before the consumer took them
        self._dropped_reported = 0
        self._last_drop_event = -math.inf
        self._on_event = on_event
        self._events: collections.deque[dict] = collections.deque(maxlen=_MAX_EVENTS)
        self._slot: Frame | None = None
        self._cond = threading.Condition()
        self._finished = False  # the grabbing thread has ended (end of input or an error)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self, target: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # handed to the consumer, which raises it
                self._error = exc
            finally:
                with self._cond:
                    self._finished = True
                    self._cond.notify_all()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def _put(self, index: int, time_s: float, image: np.ndarray) -> None:
        frame = Frame(index, time_s, image)
        with self._cond:
            if self._slot is not None:
                self.dropped += 1  # the newest frame wins
            self._slot = frame
            self.grabbed += 1
            self._cond.notify_all()

    def _event(self, type_: str, **fields: Any) -> None:
        event = {"type": type_, "time_s": time.time(), "source": self.description, **fields}
        self._events.append(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a broken callback must not stop the grabbing
                log.exception("on_event callback failed")

    def next_frame(self, timeout_s: float | None = None) -> Frame | None:
        """The next frame (blocking), or None when the source has ended, is closed, or timed out."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._slot is None:
                if self._finished or self._stop.is_set():
                    if self._error is not None:
                        error, self._error = self._error, None
                        raise error
                    return None
                wait = _WAKE_S if deadline is None else min(_WAKE_S, deadline - time.monotonic())
                if wait <= 0:
                    return None
                self._cond.wait(wait)
            frame, self._slot = self._slot, None
            self.delivered += 1
            newly_dropped = self.dropped - self._dropped_reported
            now = time.monotonic()
            # At most one event per interval: a consumer that is always behind would otherwise
            # produce one per frame.
            report = newly_dropped and now - self._last_drop_event >= _DROP_EVENT_INTERVAL_S
            if report:
                self._dropped_reported, self._last_drop_event = self.dropped, now
        if report:
            self._event("frames_dropped", frame=frame.index, count=newly_dropped, total=self.dropped)
        return frame

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame

    def sample(self, count: int) -> list[np.ndarray]:
        """The next ``count`` frames' images (for a background model before tracking starts)."""
        images = []
        while len(images) < count and (frame := self.next_frame()) is not None:
            images.append(frame.image)
        return images

    def drain_events(self) -> list[dict]:
        """Status events since the last call, oldest first."""
        drained = []
        while self._events:
            drained.append(self._events.popleft())
        return drained

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)


class CaptureSource(_ThreadedSource):
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
        reported = float(self._capture.get(cv2.CAP_PROP_FPS)) if hasattr(self._capture, "get") else 0.0
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


def open_live_source(spec_or_config: Any, fps: float = 0.0, open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
                     read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                     on_event: Callable[[dict], Any] | None = None, **reconnect: Any) -> CaptureSource:
    """A :class:`CaptureSource` for ``camera:N`` or a stream URL, or for a Config's single live
    ``video_paths`` entry (its ``frames_per_second`` overrides the rate the device reports, and
    ``streaming.source_timeout_s`` sets both timeouts)."""
    spec = spec_or_config
    if not isinstance(spec_or_config, str):
        paths = spec_or_config.video_paths
        if len(paths) != 1:
            raise SourceError(f"video_paths: a live source must be the only entry, got {paths!r}")
        spec, fps = paths[0], fps or spec_or_config.frames_per_second
        streaming = getattr(spec_or_config, "streaming", None)
        if streaming is not None:
            open_timeout_s = read_timeout_s = streaming.source_timeout_s
    parse_live_spec(spec)
    return CaptureSource(lambda: open_capture(spec, open_timeout_s, read_timeout_s), spec, fps=fps,
                         on_event=on_event, **reconnect)


class RealtimeSource(_ThreadedSource):
    """Replays frames (a file source, the simulated arena, or any iterable of images or
    :class:`Frame`) at ``fps`` in real time, as a camera would deliver them.

    Each frame is released at ``start + k / fps`` and stamped with ``clock()`` then (UNIX seconds).
    If the inner iterable is slower than ``fps``, frames go out as soon as they exist and the
    schedule restarts from there rather than bursting to catch up. ``clock`` and ``sleep`` are
    injectable for tests. ``close()`` also closes the inner source if it has ``close``.

    The replay starts at construction, as a camera that is already running, unless ``autostart``
    is False: then it starts with the first frame asked for (``start()`` or iteration), so that a
    session's setup before its loop does not cost the first frames of a file.
    """

    def __init__(self, inner: Iterable[np.ndarray | Frame], fps: float,
                 on_event: Callable[[dict], Any] | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] | None = None,
                 autostart: bool = True):
        if not fps > 0:
            raise SourceError(f"realtime replay needs a positive frame rate, got {fps!r}")
        description = f"real-time replay of {getattr(inner, 'description', type(inner).__name__)} at {fps:g} fps"
        super().__init__(description, on_event)
        self.fps = float(fps)
        self._inner = inner
        self._clock = clock
        self._sleep = sleep or self._stop.wait  # the default wakes up at once on close()
        self.n_frames = getattr(inner, "n_frames", None)
        self.width, self.height = getattr(inner, "width", 0), getattr(inner, "height", 0)
        self._iterator = iter(inner)
        self._first = None
        if not (self.width and self.height):  # learn the size from the first item
            self._first = next(self._iterator, None)
            if self._first is None:
                raise SourceError(f"{description}: the source delivered no frame")
            self.height, self.width = self._image(self._first).shape[:2]
        if autostart:
            self.start()

    def start(self) -> None:
        """Start the replay clock now (once; later calls do nothing)."""
        if self._thread is None and not self._stop.is_set():
            self._start(self._replay, "toxrt-realtime")

    def next_frame(self, timeout_s: float | None = None) -> Frame | None:
        self.start()
        return super().next_frame(timeout_s)

    @staticmethod
    def _image(item: np.ndarray | Frame) -> np.ndarray:
        return item.image if isinstance(item, Frame) else item

    def _items(self) -> Iterator[np.ndarray | Frame]:
        if self._first is not None:
            yield self._first
        yield from self._iterator

    def _replay(self) -> None:
        period = 1.0 / self.fps
        items = self._items()
        # The first item may take a while (a file's reader thread opens and starts decoding it):
        # the clock starts once it is there, so that the schedule does not begin behind.
        first = next(items, None)
        if first is None:
            return
        start = self._clock()
        for k, item in enumerate(itertools.chain((first,), items)):
            if self._stop.is_set():
                return
            wait = start + k * period - self._clock()
            if wait > 0:
                self._sleep(wait)
            elif wait < -period:  # the inner source is slow: no burst to catch up
                start = self._clock() - k * period
            if self._stop.is_set():
                return
            index = item.index if isinstance(item, Frame) else k
            self._put(index, self._clock(), to_grey(self._image(item)))

    def sample(self, count: int) -> list[np.ndarray]:
        """The inner source's own sample when it has one (spread over a file, nothing consumed)."""
        inner_sample = getattr(self._inner, "sample", None)
        return inner_sample(count) if callable(inner_sample) else super().sample(count)

    def close(self) -> None:
        super().close()
        close_inner = getattr(self._inner, "close", None)
        if callable(close_inner):
            close_inner()
