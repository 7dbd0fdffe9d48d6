"""Video files and image sequences, one after another, as a recorded :class:`FrameSource`.

File decoding runs in a reader thread a few frames ahead of the tracker: OpenCV releases the GIL
while decoding, so on two cores tracking costs little beyond the decoding itself.
"""
from __future__ import annotations

import glob
import logging
import os
import queue
import re
import threading
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from ..errors import SourceError
from ..types import Frame
from .decode import luma_table, open_video, read_grey
from .protocol import RecordedSource

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _is_image_sequence(path: str) -> bool:
    return "%" in path or os.path.isdir(path) or any(ch in path for ch in "*?")


def _expand_sequence(path: str) -> list[str]:
    """The image files of a folder, a glob, or a printf pattern such as frames/frame_%06d.png."""
    if os.path.isdir(path):
        files = [f for f in sorted(glob.glob(os.path.join(glob.escape(path), "*"))) if f.lower().endswith(IMAGE_SUFFIXES)]
    elif "%" in path:
        pattern = re.sub(r"%0?\d*d", "*", glob.escape(path).replace("[%]", "%"))
        files = sorted(glob.glob(pattern))
    else:
        files = sorted(glob.glob(path))
    return files


class _VideoReader:
    """One video file or image sequence, opened to check it and read lazily."""

    def __init__(self, path: str, key: str):
        self.path, self.key = path, key
        if _is_image_sequence(path):
            self.files = _expand_sequence(path)
            if not self.files:
                raise SourceError(f"{key}: {path}: no images found")
            first = cv2.imread(self.files[0], cv2.IMREAD_GRAYSCALE)
            if first is None:
                raise SourceError(f"{key}: {self.files[0]}: cannot be read as an image")
            self.height, self.width = first.shape
            self.n_frames = len(self.files)
            self.fps = 0.0
            return
        self.files = []
        if not os.path.exists(path):
            raise SourceError(f"{key}: {path}: file not found")
        if not os.access(path, os.R_OK):
            raise SourceError(f"{key}: {path}: file is not readable")
        capture = open_video(path)
        try:
            if not capture.isOpened():
                raise SourceError(f"{key}: {path}: cannot be opened as a video")
            ok, image = capture.read()
            if not ok or image is None:
                raise SourceError(f"{key}: {path}: no frame could be read (corrupt or empty video)")
            self.height, self.width = image.shape[:2]
            self.n_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
            self.fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        finally:
            capture.release()
        self.luma = luma_table(path)  # None: decode through BGR

    def read(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Grey images of frames [start, stop); ends early where the file breaks off."""
        if self.files:
            for name in self.files[start:stop]:
                image = cv2.imread(name, cv2.IMREAD_GRAYSCALE)
                if image is None:
                    log.warning("%s: cannot be read; the sequence stops here", name)
                    return
                yield image
            return
        capture = open_video(self.path, luma=self.luma is not None)
        try:
            if start:
                capture.set(cv2.CAP_PROP_POS_FRAMES, start)
            yield from read_grey(capture, self.luma, None if stop is None else stop - start)
        finally:
            capture.release()

    def read_one(self, index: int) -> np.ndarray | None:
        return next(iter(self.read(index, index + 1)), None)


class VideoSource(RecordedSource):
    """Video files or image sequences, one after another, with frame indices running on across them.

    ``intervals`` restricts tracking to [start, end) frame ranges (idtracker.ai's tracking_intervals);
    frames outside them are skipped by seeking, and keep their original indices.
    """

    def __init__(self, paths: Sequence[str], fps: float = 0.0, intervals: Sequence[Sequence[int]] = (), prefetch: int = 8):
        if not paths:
            raise SourceError("video_paths: no video given")
        self.readers = [_VideoReader(p, f"video_paths[{i}]") for i, p in enumerate(paths)]
        sizes = {(r.width, r.height) for r in self.readers}
        if len(sizes) > 1:
            raise SourceError(f"video_paths: the videos differ in size {sorted(sizes)}")
        self.width, self.height = self.readers[0].width, self.readers[0].height
        self.fps = fps or self.readers[0].fps or 25.0
        if not (fps or self.readers[0].fps):
            log.warning("frame rate unknown for %s; assuming 25 fps (set frames_per_second)", paths[0])
        counts = [r.n_frames for r in self.readers]
        self.total_frames = sum(counts) if all(counts) else None
        self.intervals = [tuple(map(int, iv)) for iv in intervals]
        beyond = [list(iv) for iv in self.intervals if self.total_frames is not None and iv[0] >= self.total_frames]
        if beyond:
            raise SourceError(f"tracking_intervals: {beyond[0]} starts beyond the end of the video "
                              f"({self.total_frames} frames: 0..{self.total_frames - 1})")
        self.n_frames = self._count_tracked()
        self.description = ", ".join(paths)
        self.prefetch = prefetch
        self.stopped_early_at: int | None = None
        self._stop = threading.Event()
        self._ahead: Callable[[Frame], Frame] | None = None

    def work_ahead(self, work: Callable[[Frame], Frame] | None) -> None:
        """Let the reader thread also run ``work`` on frames (the tracker's detection) whenever the
        consumer is behind: see :func:`prefetched`. Call before iterating."""
        self._ahead = work

    def _count_tracked(self) -> int | None:
        if not self.intervals:
            return self.total_frames
        if self.total_frames is None:
            return None
        return sum(max(0, min(e, self.total_frames) - s) for s, e in self.intervals)

    def _ranges(self) -> list[tuple[int, int | None]]:
        return [(s, e) for s, e in self.intervals] if self.intervals else [(0, None)]

    def _frames(self) -> Iterator[Frame]:
        offsets = np.cumsum([0] + [r.n_frames or 0 for r in self.readers])
        for start, stop in self._ranges():
            for reader, offset in zip(self.readers, offsets):
                local_start = max(0, start - offset)
                local_stop = None if stop is None else stop - offset
                if reader.n_frames and local_start >= reader.n_frames or (local_stop is not None and local_stop <= 0):
                    continue
                index = offset + local_start
                for image in reader.read(local_start, local_stop):
                    if self._stop.is_set():
                        return
                    yield Frame(int(index), index / self.fps, image)
                    index += 1
                expected = reader.n_frames if local_stop is None else min(local_stop, reader.n_frames or local_stop)
                if reader.n_frames and index - offset < expected:
                    self.stopped_early_at = int(index)
                    log.warning("%s broke off at frame %d of %d", reader.path, index - offset, reader.n_frames)
                    return

    def __iter__(self) -> Iterator[Frame]:
        return prefetched(self._frames(), self.prefetch, self._stop, self._ahead)

    def sample(self, count: int) -> list[np.ndarray]:
        """About ``count`` grey frames spread evenly over the tracked range (for the background model)."""
        total = self.total_frames or 1000
        ranges = [(s, min(e, total)) for s, e in self._ranges()] if self.intervals else [(0, total)]
        span = sum(e - s for s, e in ranges)
        wanted = np.linspace(0, span - 1, num=min(count, span)).astype(int)
        samples = []
        for position in wanted:
            for s, e in ranges:
                if position < e - s:
                    image = self._read_global(s + position)
                    if image is not None:
                        samples.append(image)
                    break
                position -= e - s
        return samples

    def _read_global(self, index: int) -> np.ndarray | None:
        for reader in self.readers:
            if reader.n_frames is None or index < reader.n_frames:
                return reader.read_one(index)
            index -= reader.n_frames
        return None

    def close(self) -> None:
        self._stop.set()


_END = object()
AHEAD_WHEN_QUEUED = 2


def prefetched(frames: Iterator[Frame], depth: int, stop: threading.Event,
               ahead: Callable[[Frame], Frame] | None = None) -> Iterator[Frame]:
    """Run ``frames`` in a reader thread, ``depth`` frames ahead; exceptions are re-raised here.

    Nothing is dropped: the reader waits while the queue is full. With ``ahead``, the reader also
    applies it to a frame whenever ``AHEAD_WHEN_QUEUED`` frames already wait for the consumer (the
    consumer is the slower one, so the reader takes over part of its work); otherwise the frame
    goes as it is and the consumer does that work itself. On two cores this balances decoding plus
    detection in one thread against linking and identities in the other.
    """
    if depth <= 0:
        yield from (frames if ahead is None else map(ahead, frames))
        return
    buffer: queue.Queue = queue.Queue(maxsize=depth)

    def reader() -> None:
        try:
            for frame in frames:
                if ahead is not None and buffer.qsize() >= AHEAD_WHEN_QUEUED:
                    frame = ahead(frame)
                while not stop.is_set():
                    try:
                        buffer.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
            buffer.put(_END)
        except BaseException as exc:  # handed over to the consumer thread
            buffer.put(exc)

    thread = threading.Thread(target=reader, name="toxrt-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=2.0)
