"""The one-frame slot of live sources (cameras, streams, real-time replay), filled by a grabbing thread.

Frames are grabbed in a thread of their own into a one-frame slot: when tracking falls behind, the
newest frame replaces the waiting one (the tracker always works on the present, as with a camera)
and every replaced frame is counted in ``dropped``. Frame indices count every grabbed frame, so a
dropped frame leaves a gap in the indices that the consumer sees; ``Frame.time_s`` is the capture
time in UNIX seconds.

Status events are plain dicts with a ``type`` and the ``frame`` they concern (as in a session's
``events.jsonl`` and the ``event`` topic): ``source_lost``, ``source_regained`` and
``frames_dropped``. They are queued for ``drain_events()`` and, if given, passed to ``on_event``
(called from the grabbing thread, so it must be quick and thread-safe).
"""
from __future__ import annotations

import collections
import logging
import math
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

from ..types import Frame

log = logging.getLogger(__name__)

DEFAULT_LIVE_FPS = 25.0  # when a camera or stream does not report its rate
_WAKE_S = 0.2  # how often waiting threads look at the closed flag
_MAX_EVENTS = 1000
_DROP_EVENT_INTERVAL_S = 1.0  # frames_dropped events are grouped over this interval


class ThreadedSource:
    """The one-frame slot shared by the grabbing thread (``_put``) and the consumer (``__iter__``).

    A live :class:`~toxrt.sources.protocol.FrameSource`; subclasses start the grabbing thread."""

    live = True

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

    def work_ahead(self, work: Callable[[Frame], Frame] | None) -> None:
        """Nothing to do: the grabbing thread only grabs (the newest frame wins, detected or not)."""

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
