"""The session folder's writer: records the tracking loop without blocking it (``session_reader.py`` loads it).

Layout (see docs/architecture.md, "The session folder")::

    session.json                 format, metadata; rewritten atomically on update_meta and close
    parameters.toml              the configuration used
    background.png               the background model (absent when there is none)
    blobs/chunk_NNNNNN.npz       one file per flush: rows, histograms, Hu moments, frame range
    identification_images.u8     raw uint8 crops, s * s bytes per row, append-only
    events.jsonl                 one JSON object per line

Durability: the writer thread flushes what it holds once the oldest of it is ``flush_interval_s``
old. A chunk is written to a temporary file and renamed, so a chunk either exists whole or not at
all. Crops and event lines are appended and flushed to the operating system *before* the chunk
that refers to them is renamed into place. No ``fsync`` is done: after a ``kill -9`` the kernel still writes the page
cache out, so everything flushed survives; only a power cut or kernel crash can lose more, and
the loader tolerates that too (a crop file shorter than the rows, a half-written last line).

A ``kill -9`` loses at most ``flush_interval_s`` plus the *flush lag*: how long after it was due a
flush reached the disk. On a local disk the lag is milliseconds. On slow storage it grows to about
twice the time one chunk takes to write minus the interval (a chunk queued while the previous one is
written is written right after it); the writer measures it (``WriterStats``), and warns, rate-limited,
when it exceeds ``flush_interval_s``. ``session.json`` says ``recording_complete`` once the writer was
closed; ``complete`` is set only by the end-of-session finishing, once the trajectories are written.
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np

from .. import __version__
from ..config import RecordingConfig
from ..errors import SessionError
from ..log_limit import WarningLimiter
from ..types import FrameResult, IdentityEvent, blob_records, event_dict
from .atomic import atomic_open, write_bytes_atomic
from .layout import (BACKGROUND_PNG, BLOBS_DIR, CROPS_FILE, EVENTS_FILE, FORMAT, PARAMETERS_TOML, RECORDING_FILES,
                     SESSION_JSON, TRAJECTORIES_DIR)
from .session_lock import SessionLock

log = logging.getLogger(__name__)

_STOP = object()


def _json_default(value: Any) -> Any:
    """Make numpy scalars, arrays, paths and IdentityEvents JSON-writable."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-writable")


def _json_line(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default) + "\n"
    except (TypeError, ValueError) as exc:
        raise SessionError(f"{what} {value!r:.80} cannot be written as JSON: {exc}") from None


@dataclasses.dataclass
class WriterStats:
    """Counters of a SessionWriter (read them from any thread; they only grow)."""

    frames_queued: int = 0
    frames_written: int = 0  # frames in chunks renamed into place (survive a kill -9)
    rows_written: int = 0
    chunks_written: int = 0
    events_written: int = 0
    max_queue_depth: int = 0
    stalls: int = 0  # write_frame calls that found the queue full and waited
    dropped: int = 0  # always 0: a full queue blocks the caller instead
    flush_lag_s: float = 0.0  # the last flush: seconds after it was due that it reached the disk
    max_flush_lag_s: float = 0.0  # the largest flush lag so far; a kill loses <= flush_interval_s + this
    slow_flushes: int = 0  # flushes whose lag exceeded flush_interval_s


@dataclasses.dataclass
class _Pending:
    """What the writer thread holds between two flushes."""

    frames: list = dataclasses.field(default_factory=list)  # FrameResults, in frame order
    events: list = dataclasses.field(default_factory=list)  # JSON lines
    meta_dirty: bool = False
    first_queued: float | None = None  # clock time the oldest item held was queued


class SessionWriter:
    """Record a session without blocking the frame loop.

    ``write_frame`` only puts a reference to the result on a queue; a background thread turns the
    buffered frames into one chunk per flush. Contract: the caller must not mutate the arrays of a
    FrameResult (blob arrays, fragment, identity, probability, status) after passing it, nor the
    event dicts; the writer reads them later, from its own thread, without copying.
    Frames must come in increasing frame_index order.
    If the queue is full the caller waits (counted in ``stats.stalls``): no frame is ever dropped.
    Use as a context manager, or call ``close()``; an unclosed writer is closed when Python exits
    normally (not on a kill, where at most the last flush interval is lost).
    """

    def __init__(
        self,
        session_dir: Path,
        cfg: RecordingConfig,
        meta: dict,
        parameters_toml: str,
        background: np.ndarray | None,
        identification_image_size: int,
        histogram_bins: int,
        overwrite: bool = False,
        lock: SessionLock | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the folder and write session.json, parameters.toml and background.png.

        meta: JSON-able session metadata (video_paths, width, height, frames_per_second,
        number_of_animals, body_length_px, ...). background: (height, width) grey image; float
        values are rounded and clipped to uint8. An existing session in ``session_dir`` raises
        SessionError unless ``overwrite`` is true, in which case its recording files are removed.
        lock: the folder's SessionLock, held by the caller (who releases it); without one the writer
        takes it here and releases it on close. A folder locked by a live process raises SessionError.
        clock: monotonic seconds, for the flush schedule and the flush lag.
        """
        self.session_dir = Path(session_dir)
        self.cfg = cfg
        self.stats = WriterStats()
        self._crop_size = int(identification_image_size)
        self._bins = int(histogram_bins)
        self._closed = False
        self._error: BaseException | None = None
        self._clock = clock
        self._own_lock = SessionLock(self.session_dir) if lock is None else None
        try:
            self._prepare_folder(overwrite)
            self._meta = {
                **meta,
                "format": FORMAT,
                "toxrt_version": __version__,
                "identification_image_size": self._crop_size,
                "histogram_bins": self._bins,
                "identification_images": bool(cfg.identification_images),
                "background": background is not None,
                "complete": False,
            }
            self._start_files(parameters_toml, background)
        except OSError as exc:  # a full disk or a read-only folder: one line, not a traceback
            self._release_own_lock()
            raise SessionError(f"{self.session_dir}: cannot write the session: {exc.strerror or exc}") from None
        except BaseException:
            self._release_own_lock()
            raise
        self._slow_warnings = WarningLimiter(log, first=3, every_s=30.0, clock=clock)
        self._chunk_index = 0
        self._crop_rows = 0  # images in identification_images.u8 so far
        self._last_frame = -1
        self._queue: queue.Queue = queue.Queue(maxsize=cfg.queue_frames)
        self._thread = threading.Thread(target=self._run, name="toxrt-session-writer", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)  # an unclosed writer still flushes when Python exits

    def _start_files(self, parameters_toml: str, background: np.ndarray | None) -> None:
        """session.json, parameters.toml, background.png, and the append-only files opened."""
        self._write_meta()
        (self.session_dir / PARAMETERS_TOML).write_text(parameters_toml, encoding="utf-8")
        if background is not None:
            image = np.clip(np.rint(background), 0, 255).astype(np.uint8)
            if not cv2.imwrite(str(self.session_dir / BACKGROUND_PNG), image):
                raise SessionError(f"{self.session_dir / BACKGROUND_PNG}: cannot write the background image")
        self._crops_handle = open(self.session_dir / CROPS_FILE, "ab") if self.cfg.identification_images else None
        self._events_handle = open(self.session_dir / EVENTS_FILE, "a", encoding="utf-8")

    def _prepare_folder(self, overwrite: bool) -> None:
        folder = self.session_dir
        if (folder / SESSION_JSON).exists() or (folder / BLOBS_DIR).exists():
            if not overwrite:
                raise SessionError(f"{folder}: already holds a recorded session; choose another name or overwrite it")
            for name in RECORDING_FILES:
                (folder / name).unlink(missing_ok=True)
            shutil.rmtree(folder / BLOBS_DIR, ignore_errors=True)
            shutil.rmtree(folder / TRAJECTORIES_DIR, ignore_errors=True)  # stale results of the old run
        try:
            (folder / BLOBS_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SessionError(f"{folder}: cannot create the session folder: {exc.strerror}") from None

    # ---- caller side: each call returns in microseconds unless the queue is full ----

    def write_frame(self, result: FrameResult) -> None:
        """Queue one frame's blobs for recording (a reference only: no copy, no disk access).

        ``result.events`` are *not* recorded here: pass them to ``write_events``.
        """
        blobs = result.blobs
        if self.cfg.identification_images and blobs.crop.shape[1:] != (self._crop_size, self._crop_size):
            raise SessionError(f"identification images of shape {blobs.crop.shape[1:]} "
                               f"do not match identification_image_size {self._crop_size}")
        if blobs.histogram.shape[1:] != (self._bins,):
            raise SessionError(f"histograms of shape {blobs.histogram.shape[1:]} "
                               f"do not match histogram_bins {self._bins}")
        self._put(("frame", result, self._clock()))
        self.stats.frames_queued += 1

    def write_events(self, events: Iterable[dict | IdentityEvent]) -> None:
        """Queue events (JSON-able dicts or IdentityEvents) for events.jsonl.

        Events are few, so they are serialised here: a bad event fails in the caller, not later.
        """
        lines = [_json_line(event_dict(e), "event") for e in events]
        if lines:
            self._put(("events", lines, self._clock()))

    def update_meta(self, **fields: Any) -> None:
        """Merge JSON-able fields into session.json (written at the next flush)."""
        _json_line(fields, "session metadata")
        self._put(("meta", fields, self._clock()))

    def _put(self, item: Any) -> None:
        self._check_open()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.stats.stalls += 1
            self._put_waiting(item)
        depth = self._queue.qsize()
        if depth > self.stats.max_queue_depth:
            self.stats.max_queue_depth = depth

    def _put_waiting(self, item: Any) -> bool:
        """Wait for room in the queue, but never forever on a dead writer thread."""
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        if not self._closed:
            self._check_open()
        return False

    def _check_open(self) -> None:
        if self._closed:
            raise SessionError(f"{self.session_dir}: the session writer is closed")
        if self._error is not None or not self._thread.is_alive():
            raise SessionError(f"{self.session_dir}: the session writer failed: {self._error}")

    def close(self) -> None:
        """Flush everything, mark the session complete, join the thread. Idempotent.

        Raises SessionError if the writer thread failed (disk full, folder removed, ...).
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        if self._put_waiting(_STOP):
            self._thread.join()
        for handle in (self._crops_handle, self._events_handle):
            try:
                if handle is not None:
                    handle.close()  # flushes: fails again on a full disk
            except OSError as exc:
                self._error = self._error or exc
        self._release_own_lock()
        if self._error is not None:
            raise SessionError(f"{self.session_dir}: the session writer failed: {self._error}")
        log.info("session %s closed: %d frames, %d rows, %d chunks, max queue %d, %d stalls",
                 self.session_dir, self.stats.frames_written, self.stats.rows_written,
                 self.stats.chunks_written, self.stats.max_queue_depth, self.stats.stalls)

    def _release_own_lock(self) -> None:
        if self._own_lock is not None:
            self._own_lock.release()

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except SessionError as exc:
            log.error("%s", exc)

    def __enter__(self) -> "SessionWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ---- writer thread ----

    def _run(self) -> None:
        pending = _Pending()
        interval = self.cfg.flush_interval_s
        try:
            while True:
                # Due when the oldest item held is flush_interval_s old: after a slow flush, what
                # queued meanwhile is already due, and all of it is written at once.
                due = None if pending.first_queued is None else pending.first_queued + interval
                try:
                    item = self._queue.get(timeout=None if due is None else max(0.0, due - self._clock()))
                except queue.Empty:
                    item = None
                if item is not None and item is not _STOP:
                    self._hold(pending, item)
                now_due = pending.first_queued is not None and self._clock() >= pending.first_queued + interval
                if now_due and item is not _STOP:
                    item = self._hold_queued(pending)
                if item is _STOP:
                    self._meta["recording_complete"] = True
                    pending.meta_dirty = True
                    self._flush(pending)
                    return
                if now_due:
                    self._flush(pending)
                    pending = _Pending()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller by write_frame/close
            # One line: the caller turns it into the session's one-line error (a full disk is no bug).
            log.error("session writer failed: %s", exc)
            self._error = exc

    def _hold(self, pending: _Pending, item: tuple) -> None:
        kind, payload, t_queued = item
        if pending.first_queued is None:
            pending.first_queued = t_queued
        if kind == "frame":
            pending.frames.append(payload)
        elif kind == "events":
            pending.events.extend(payload)
        else:
            self._meta.update(payload)
            pending.meta_dirty = True

    def _hold_queued(self, pending: _Pending) -> Any:
        """Take everything queued now into ``pending``; returns _STOP if it was among it, else None."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return None
            if item is _STOP:
                return _STOP
            self._hold(pending, item)

    def _flush(self, pending: _Pending) -> None:
        """The chunk (its crops appended first, the chunk renamed last), events, session.json."""
        if pending.frames:
            self._write_chunk(pending.frames)
        if pending.events:
            self._events_handle.write("".join(pending.events))
            self._events_handle.flush()
            self.stats.events_written += len(pending.events)
        if pending.meta_dirty or pending.frames:
            self._meta["n_frames"] = self._last_frame + 1
            self._write_meta()
        if pending.first_queued is not None:
            self._measure_lag(self._clock() - pending.first_queued - self.cfg.flush_interval_s)

    def _measure_lag(self, lag: float) -> None:
        lag = max(0.0, lag)
        self.stats.flush_lag_s = lag
        self.stats.max_flush_lag_s = max(self.stats.max_flush_lag_s, lag)
        interval = self.cfg.flush_interval_s
        if lag > interval:
            self.stats.slow_flushes += 1
            self._slow_warnings.warn(
                f"recording late (slow disk, or a CPU too busy to write): a flush reached {self.session_dir} "
                f"{lag:.2f} s late; a kill now would lose up to {interval + lag:.1f} s of tracking "
                f"(flush_interval_s = {interval:g})")

    def _write_chunk(self, frames: list[FrameResult]) -> None:
        rows = np.concatenate([blob_records(r) for r in frames])
        histogram = np.concatenate([r.blobs.histogram for r in frames]).astype(np.float16)
        hu = np.concatenate([r.blobs.hu for r in frames]).astype(np.float64)
        crop_offset = -1
        if self._crops_handle is not None:
            crop_offset = self._crop_rows
            for r in frames:  # write each frame's crops as they are: no concatenated copy
                self._crops_handle.write(np.ascontiguousarray(r.blobs.crop, dtype=np.uint8).data)
            self._crops_handle.flush()
            self._crop_rows += len(rows)
        frame_range = np.array([frames[0].frame_index, frames[-1].frame_index], np.int64)
        path = self.session_dir / BLOBS_DIR / f"chunk_{self._chunk_index:06d}.npz"
        with atomic_open(path) as handle:
            np.savez(handle, blobs=rows, histogram=histogram, hu=hu,
                     crop_offset=np.int64(crop_offset), frame_range=frame_range)
        self._chunk_index += 1
        self._last_frame = max(self._last_frame, frames[-1].frame_index)
        self.stats.chunks_written += 1
        self.stats.rows_written += len(rows)
        self.stats.frames_written += len(frames)

    def _write_meta(self) -> None:
        text = json.dumps(self._meta, indent=1, default=_json_default)
        write_bytes_atomic(self.session_dir / SESSION_JSON, text.encode())
