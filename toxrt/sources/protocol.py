"""What every frame source is: files, image sequences, the simulated arena, cameras, streams, replay.

A source knows its size and frame rate, iterates grey :class:`~toxrt.types.Frame` objects with
0-based indices, and is closed when done. Whether it is *live* is declared, never guessed: a live
source (a camera, a stream, a real-time replay) stamps frames with UNIX capture times, may drop
frames when the consumer falls behind (counted in ``dropped``) and reports status events
(``drain_events``); a recorded source delivers every frame at the consumer's pace.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol

import cv2
import numpy as np

from ..types import Frame


class FrameSource(Protocol):
    fps: float
    width: int
    height: int
    n_frames: int | None  # None for endless live sources
    description: str
    live: bool  # capture times in UNIX seconds, frames may be dropped (cameras, streams, real-time replay)
    dropped: int  # frames lost before the consumer took them (always 0 for recorded sources)
    stopped_early_at: int | None  # the frame index at which a file broke off, if it did

    def __iter__(self) -> Iterator[Frame]: ...

    def sample(self, count: int) -> list[np.ndarray]:
        """About ``count`` grey images for the background model, taken before tracking starts."""
        ...

    def work_ahead(self, work: Callable[[Frame], Frame] | None) -> None:
        """Let the source apply ``work`` (the tracker's detection) to frames ahead of the consumer
        when it can (a file's reader thread); other sources ignore it. Call before iterating."""
        ...

    def drain_events(self) -> list[dict]:
        """Status events since the last call, oldest first (dicts with a ``type``; none for recorded sources)."""
        ...

    def close(self) -> None: ...


class RecordedSource:
    """What sources of recorded frames share: every frame is delivered, at the consumer's pace."""

    live = False
    dropped = 0
    stopped_early_at: int | None = None

    def work_ahead(self, work: Callable[[Frame], Frame] | None) -> None:
        """Nothing to do: only a file's reader thread works ahead (``VideoSource``)."""

    def drain_events(self) -> list[dict]:
        return []

    def close(self) -> None:
        pass


def to_grey(image: np.ndarray) -> np.ndarray:
    """A grey uint8 (H, W) image from a grey, one-channel or BGR one."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
