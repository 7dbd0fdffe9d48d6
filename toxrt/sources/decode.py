"""Video files decoded straight to grey, as cheaply as OpenCV's FFmpeg backend allows.

Tracking needs one grey plane per frame. The usual ``VideoCapture.read()`` converts every decoded
YUV frame to BGR (FFmpeg's swscale) and ``cvtColor`` then turns it back into grey: two whole-frame
passes that cost as much as a third of the decoding itself (0.5 ms of 2.3 ms per 720p frame,
1.2 ms of 5.2 ms per 1080p frame, one core). Here the decoder hands over its luma (Y) plane
(``CAP_PROP_CONVERT_RGB = 0``: one copy) and a 256-entry table maps it onto the grey levels
``cvtColor(BGR2GRAY)`` would have given, so thresholds tuned on OpenCV's grey keep their meaning.

The table is calibrated per file on its first frames, decoded both ways: for each luma value, the
grey level seen most often with it (luma values not seen are filled from the nearest seen ones along
the limited-range line ``(Y - 16) * 255 / 219``, or full range if that fits better). On grey videos
the table reproduces ``cvtColor`` but for the few pixels whose compressed colour is not quite
neutral (one grey level off); on colour videos grey also depends on the colour, and pixels then
differ by one grey level (more on at most 0.1% of them, else the file is read through BGR). When the calibration finds larger differences (another
pixel format, a 10-bit video, an OpenCV that ignores the property) the file is read through BGR.

Decoding runs with ``DECODE_THREADS`` FFmpeg threads (``CAP_PROP_N_THREADS``): the reader thread
decodes while the main thread tracks, so on two cores one decoding thread keeps the second core for
tracking (measured in docs/benchmarks.md, "Decoding beside tracking").
"""
from __future__ import annotations

import logging
import threading
from typing import Iterator

import cv2
import numpy as np

log = logging.getLogger(__name__)

DECODE_THREADS = 1
CALIBRATION_FRAMES = 8
# Luma is used when the calibrated table is within one grey level of cvtColor on this share of pixels.
MAX_OFF_BY_MORE_THAN_ONE = 1e-3

_LIMITED = np.clip(np.rint((np.arange(256) - 16) * 255.0 / 219.0), 0, 255)
_FULL = np.arange(256, dtype=np.float64)
_log_lock = threading.Lock()
_quiet_set = False


def _quiet_opencv_warnings() -> None:
    """OpenCV warns on every luma frame that the format is 'unknown' (it is the Y plane we asked
    for); only errors are logged from then on. Once per process."""
    global _quiet_set
    with _log_lock:
        if not _quiet_set:
            _quiet_set = True
            if cv2.utils.logging.getLogLevel() > cv2.utils.logging.LOG_LEVEL_ERROR:
                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def open_video(path: str, threads: int = DECODE_THREADS, luma: bool = False) -> cv2.VideoCapture:
    """A ``VideoCapture`` on ``path`` through FFmpeg with ``threads`` decoding threads; ``luma``
    asks for the decoder's own planes (Y first) instead of BGR. Falls back to any backend that
    opens the file (then neither option applies)."""
    params = [cv2.CAP_PROP_N_THREADS, int(threads)]
    if luma:
        _quiet_opencv_warnings()
        params += [cv2.CAP_PROP_CONVERT_RGB, 0]
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        capture.release()
        capture = cv2.VideoCapture(path)
    return capture


def _fill_unseen(table: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Luma values never seen take the offset of the nearest seen value from the better-fitting line."""
    values = np.flatnonzero(seen)
    line = min((_LIMITED, _FULL), key=lambda ref: np.abs(table[values] - ref[values]).mean())
    nearest = values[np.clip(np.searchsorted(values, np.arange(256)), 0, values.size - 1)]
    below = values[np.clip(np.searchsorted(values, np.arange(256)) - 1, 0, values.size - 1)]
    nearest = np.where(np.abs(below - np.arange(256)) < np.abs(nearest - np.arange(256)), below, nearest)
    filled = line + (table[nearest] - line[nearest])
    return np.where(seen, table, np.clip(filled, 0, 255)).astype(np.uint8)


def luma_table(path: str, frames: int = CALIBRATION_FRAMES) -> np.ndarray | None:
    """uint8 (256,) luma -> grey table for ``path``, or None when its luma plane cannot stand in
    for ``cvtColor(BGR2GRAY)`` (see the module docstring)."""
    bgr, luma = open_video(path, 1), open_video(path, 1, luma=True)
    joint = np.zeros(256 * 256, np.int64)
    pairs = []
    try:
        for _ in range(frames):
            ok_a, colour = bgr.read()
            ok_b, plane = luma.read()
            if not (ok_a and ok_b):
                break
            grey = colour if colour.ndim == 2 else cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
            if plane.dtype != np.uint8 or plane.shape != grey.shape:
                return None
            joint += np.bincount((plane.ravel().astype(np.int64) << 8) | grey.ravel(), minlength=256 * 256)
            pairs.append((plane, grey))
    finally:
        bgr.release()
        luma.release()
    if not pairs:
        return None
    joint = joint.reshape(256, 256)
    seen = joint.sum(axis=1) > 0
    table = _fill_unseen(joint.argmax(axis=1).astype(np.float64), seen)
    off = sum(int(np.count_nonzero(np.abs(cv2.LUT(p, table).astype(np.int16) - g) > 1)) for p, g in pairs)
    if off > MAX_OFF_BY_MORE_THAN_ONE * sum(g.size for _, g in pairs):
        log.info("%s: luma plane differs from OpenCV's grey; decoding through BGR", path)
        return None
    return table


def read_grey(capture: cv2.VideoCapture, table: np.ndarray | None, stop: int | None = None) -> Iterator[np.ndarray]:
    """Grey frames from an open capture until it ends or ``stop`` frames were read.

    With a luma ``table`` the capture must have been opened with ``luma=True``. Each frame is a new
    array (it goes to another thread); the decoder's own output buffer is reused.
    """
    plane = None
    count = 0
    while stop is None or count < stop:
        ok, plane = capture.read(plane)
        if not ok:
            return
        count += 1
        if table is not None:
            yield cv2.LUT(plane, table)
        elif plane.ndim == 2:
            yield plane.copy()
        else:
            yield cv2.cvtColor(plane, cv2.COLOR_BGR2GRAY)
