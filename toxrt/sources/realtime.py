"""Real-time replay: any :class:`FrameSource` delivered at its frame rate, as a camera would.

``streaming.realtime = true`` replays a file or the simulated arena this way (``tracking.py``), so
that the whole live path (newest frame wins, drops counted, capture times) runs on a recording.
:class:`IterableSource` makes frames in memory (or any iterator of images) a source to replay.
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import SourceError
from ..types import Frame
from .protocol import FrameSource, RecordedSource, to_grey
from .threaded import ThreadedSource


class IterableSource(RecordedSource):
    """Grey images or :class:`Frame` objects from any iterable (a list in memory, a generator) as a
    recorded source: an image becomes frame k at ``k / fps`` seconds, a Frame stays as it is.

    The size comes from the first item, read at construction. ``sample`` returns the first
    ``count`` images without consuming them (they are kept until iterated).
    """

    def __init__(self, frames: Iterable[np.ndarray | Frame], fps: float = 25.0, description: str = "frames in memory"):
        self.fps, self.description, self.n_frames = float(fps), description, None
        self._iterator = iter(frames)
        self._ahead: list[np.ndarray | Frame] = []
        first = self._peek(1)
        if not first:
            raise SourceError(f"{description}: the source delivered no frame")
        self.height, self.width = _image(first[0]).shape[:2]

    def _peek(self, count: int) -> list[np.ndarray | Frame]:
        self._ahead.extend(itertools.islice(self._iterator, max(0, count - len(self._ahead))))
        return self._ahead[:count]

    def __iter__(self) -> Iterator[Frame]:
        for k, item in enumerate(itertools.chain(self._drain_ahead(), self._iterator)):
            yield item if isinstance(item, Frame) else Frame(k, k / self.fps, item)

    def _drain_ahead(self) -> Iterator[np.ndarray | Frame]:
        while self._ahead:
            yield self._ahead.pop(0)

    def sample(self, count: int) -> list[np.ndarray]:
        return [to_grey(_image(item)) for item in self._peek(count)]


def _image(item: np.ndarray | Frame) -> np.ndarray:
    return item.image if isinstance(item, Frame) else item


class RealtimeSource(ThreadedSource):
    """Replays a recorded source (a file, the simulated arena, an :class:`IterableSource`) at ``fps``
    in real time, as a camera would deliver it; frames keep their indices.

    Each frame is released at ``start + k / fps`` and stamped with ``clock()`` then (UNIX seconds).
    If the inner source is slower than ``fps``, frames go out as soon as they exist and the
    schedule restarts from there rather than bursting to catch up. ``clock`` and ``sleep`` are
    injectable for tests. ``close()`` also closes the inner source.

    The replay starts at construction, as a camera that is already running, unless ``autostart``
    is False: then it starts with the first frame asked for (``start()`` or iteration), so that a
    session's setup before its loop does not cost the first frames of a file.
    """

    def __init__(self, source: FrameSource, fps: float,
                 on_event: Callable[[dict], Any] | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] | None = None,
                 autostart: bool = True):
        if not fps > 0:
            raise SourceError(f"realtime replay needs a positive frame rate, got {fps!r}")
        super().__init__(f"real-time replay of {source.description} at {fps:g} fps", on_event)
        self.fps = float(fps)
        self._source = source
        self._clock = clock
        self._sleep = sleep or self._stop.wait  # the default wakes up at once on close()
        self.n_frames = source.n_frames
        self.width, self.height = source.width, source.height
        self._iterator = iter(source)
        if autostart:
            self.start()

    @property
    def started(self) -> bool:
        """The replay clock runs (from construction, or from the first frame asked for)."""
        return self._thread is not None

    def start(self) -> None:
        """Start the replay clock now (once; later calls do nothing)."""
        if self._thread is None and not self._stop.is_set():
            self._start(self._replay, "toxrt-realtime")

    def next_frame(self, timeout_s: float | None = None) -> Frame | None:
        self.start()
        return super().next_frame(timeout_s)

    def _replay(self) -> None:
        period = 1.0 / self.fps
        items = self._iterator
        # The first frame may take a while (a file's reader thread opens and starts decoding it):
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
            self._put(item.index, self._clock(), to_grey(item.image))

    def sample(self, count: int) -> list[np.ndarray]:
        """The inner source's own sample (spread over a file, nothing consumed)."""
        return self._source.sample(count)

    def close(self) -> None:
        super().close()
        self._source.close()
