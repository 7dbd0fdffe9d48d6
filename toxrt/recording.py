"""The session folder's writer: records the live loop without blocking it (``session_reader.py`` loads it).

Layout (see docs/architecture.md, "The session folder")::

    session.json                 format, metadata; rewritten atomically on update_meta and close
    parameters.toml              the configuration used
    background.png               the background model (absent when there is none)
    blobs/chunk_NNNNNN.npz       one file per flush: rows, histograms, Hu moments, frame range
    identification_images.u8     raw uint8 crops, s * s bytes per row, append-only
    events.jsonl                 one JSON object per line

Durability: the writer thread flushes at least every ``flush_interval_s``. A chunk is written to a
temporary file and renamed, so a chunk either exists whole or not at all. Crops and event lines
are appended and flushed to the operating system *before* the chunk that refers to them is
renamed into place. No ``fsync`` is done: after a ``kill -9`` the kernel still writes the page
cache out, so everything flushed survives; only a power cut or kernel crash can lose more, and
the loader tolerates that too (a crop file shorter than the rows, a half-written last line).
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from . import __version__
from .config import RecordingConfig
from .errors import SessionError
from .types import FrameResult, IdentityEvent, blob_records

log = logging.getLogger(__name__)

FORMAT = "toxrt-session-1"
SESSION_JSON = "session.json"
PARAMETERS_TOML = "parameters.toml"
BACKGROUND_PNG = "background.png"
BLOBS_DIR = "blobs"
CROPS_FILE = "identification_images.u8"
EVENTS_FILE = "events.jsonl"
_RECORDING_FILES = (SESSION_JSON, PARAMETERS_TOML, BACKGROUND_PNG, CROPS_FILE, EVENTS_FILE)
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


def event_to_dict(event: IdentityEvent | dict) -> dict:
    """An event as written to events.jsonl; IdentityEvents get ``"type": "identity"``."""
    if isinstance(event, IdentityEvent):
        return event.as_event()
    if isinstance(event, dict):
        return event
    raise TypeError(f"an event must be a dict or an IdentityEvent, got {type(event).__name__}")


def _json_line(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default) + "\n"
    except (TypeError, ValueError) as exc:
        raise SessionError(f"{what} {value!r:.80} cannot be written as JSON: {exc}") from None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


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


@dataclasses.dataclass
class _Pending:
    """What the writer thread holds between two flushes."""

    frames: list = dataclasses.field(default_factory=list)  # FrameResults, in frame order
    events: list = dataclasses.field(default_factory=list)  # JSON lines
    meta_dirty: bool = False


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
    ) -> None:
        """Create the folder and write session.json, parameters.toml and background.png.

        meta: JSON-able session metadata (video_paths, width, height, frames_per_second,
        number_of_animals, body_length_px, ...). background: (height, width) grey image; float
        values are rounded and clipped to uint8. An existing session in ``session_dir`` raises
        SessionError unless ``overwrite`` is true, in which case its recording files are removed.
        """
        self.session_dir = Path(session_dir)
        self.cfg = cfg
        self.stats = WriterStats()
        self._crop_size = int(identification_image_size)
        self._bins = int(histogram_bins)
        self._closed = False
        self._error: BaseException | None = None
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
        self._write_meta()
        (self.session_dir / PARAMETERS_TOML).write_text(parameters_toml)
        if background is not None:
            image = np.clip(np.rint(background), 0, 255).astype(np.uint8)
            if not cv2.imwrite(str(self.session_dir / BACKGROUND_PNG), image):
                raise SessionError(f"{self.session_dir / BACKGROUND_PNG}: cannot write the background image")
        self._chunk_index = 0
        self._crop_rows = 0  # images in identification_images.u8 so far
        self._last_frame = -1
        self._crops_handle = open(self.session_dir / CROPS_FILE, "ab") if cfg.identification_images else None
        self._events_handle = open(self.session_dir / EVENTS_FILE, "a", encoding="utf-8")
        self._queue: queue.Queue = queue.Queue(maxsize=cfg.queue_frames)
        self._thread = threading.Thread(target=self._run, name="toxrt-session-writer", daemon=True)
        self._thread.start()
        atexit.register(self._close_at_exit)  # an unclosed writer still flushes when Python exits

    def _prepare_folder(self, overwrite: bool) -> None:
        folder = self.session_dir
        if (folder / SESSION_JSON).exists() or (folder / BLOBS_DIR).exists():
            if not overwrite:
                raise SessionError(f"{folder}: already holds a recorded session; choose another name or overwrite it")
            for name in _RECORDING_FILES:
                (folder / name).unlink(missing_ok=True)
            shutil.rmtree(folder / BLOBS_DIR, ignore_errors=True)
            shutil.rmtree(folder / "trajectories", ignore_errors=True)  # stale results of the old run
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
        item = ("frame", result)
        self._put(item)
        self.stats.frames_queued += 1

    def write_events(self, events: Iterable[dict | IdentityEvent]) -> None:
        """Queue events (JSON-able dicts or IdentityEvents) for events.jsonl.

        Events are few, so they are serialised here: a bad event fails in the caller, not later.
        """
        lines = [_json_line(event_to_dict(e), "event") for e in events]
        if lines:
            self._put(("events", lines))

    def update_meta(self, **fields: Any) -> None:
        """Merge JSON-able fields into session.json (written at the next flush)."""
        _json_line(fields, "session metadata")
        self._put(("meta", fields))

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
        if self._crops_handle is not None:
            self._crops_handle.close()
        self._events_handle.close()
        if self._error is not None:
            raise SessionError(f"{self.session_dir}: the session writer failed: {self._error}")
        log.info("session %s closed: %d frames, %d rows, %d chunks, max queue %d, %d stalls",
                 self.session_dir, self.stats.frames_written, self.stats.rows_written,
                 self.stats.chunks_written, self.stats.max_queue_depth, self.stats.stalls)

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
        next_flush = time.monotonic() + interval
        try:
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
                except queue.Empty:
                    item = None
                if item is _STOP:
                    self._meta["complete"] = True
                    pending.meta_dirty = True
                    self._flush(pending)
                    return
                if item is not None:
                    kind, payload = item
                    if kind == "frame":
                        pending.frames.append(payload)
                    elif kind == "events":
                        pending.events.extend(payload)
                    else:
                        self._meta.update(payload)
                        pending.meta_dirty = True
                if time.monotonic() >= next_flush:
                    self._flush(pending)
                    pending = _Pending()
                    next_flush = time.monotonic() + interval
        except BaseException as exc:  # noqa: BLE001 - reported to the caller by write_frame/close
            log.exception("session writer failed")
            self._error = exc

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
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, blobs=rows, histogram=histogram, hu=hu,
                     crop_offset=np.int64(crop_offset), frame_range=frame_range)
        os.replace(tmp, path)
        self._chunk_index += 1
        self._last_frame = max(self._last_frame, frames[-1].frame_index)
        self.stats.chunks_written += 1
        self.stats.rows_written += len(rows)
        self.stats.frames_written += len(frames)

    def _write_meta(self) -> None:
        text = json.dumps(self._meta, indent=1, default=_json_default)
        _write_atomic(self.session_dir / SESSION_JSON, text.encode())
