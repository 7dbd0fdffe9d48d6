"""The session folder: a non-blocking writer for the live loop and a read-only loader.

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
import tomllib
import zipfile
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from . import __version__
from .config import RecordingConfig
from .errors import SessionError
from .types import BLOB_RECORD_DTYPE, FRAGMENT_RECORD_DTYPE, FrameResult, IdentityEvent, blob_records

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
        return {"type": "identity", **dataclasses.asdict(event)}
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


@dataclasses.dataclass
class _Chunk:
    path: Path
    n_rows: int
    crop_offset: int  # -1 when recorded without identification images


class Session:
    """A recorded session, read-only. Build it with ``load_session``.

    blobs      BLOB_RECORD_DTYPE (rows,), in frame order
    fragments  FRAGMENT_RECORD_DTYPE (fragments,), sorted by fragment id, derived from the rows
    events     list of dicts from events.jsonl
    n_frames   last recorded frame index + 1 (frames without blobs count)
    has_crop   bool (rows,): the row's identification image is on disk (see crops)
    crop_index int64 (rows,): the row's image in identification_images.u8, -1 when none
    crop_size  s, the side of the identification images in pixels
    """

    def __init__(self, session_dir: Path, meta: dict, parameters: dict, background: np.ndarray | None,
                 chunks: list[_Chunk], blobs: np.ndarray, n_frames: int, events: list[dict]) -> None:
        self.session_dir = session_dir
        self.meta = meta
        self.parameters = parameters
        self.background = background
        self.blobs = blobs
        self.n_frames = n_frames
        self.events = events
        self._chunks = chunks
        self.crop_size = int(meta.get("identification_image_size", 0))
        self.crop_index = self._crop_index()
        self.has_crop = (self.crop_index >= 0) & (self.crop_index < self._crops_on_disk())
        self.fragments = derive_fragments(blobs)
        self._histograms: np.ndarray | None = None
        self._hu: np.ndarray | None = None

    def _crop_index(self) -> np.ndarray:
        """int64 (rows,): each row's image index in identification_images.u8, -1 when none."""
        parts = [np.arange(c.n_rows, dtype=np.int64) + c.crop_offset if c.crop_offset >= 0
                 else np.full(c.n_rows, -1, np.int64) for c in self._chunks]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _crops_on_disk(self) -> int:
        path = self.session_dir / CROPS_FILE
        if self.crop_size <= 0 or not path.exists():
            return 0
        return path.stat().st_size // (self.crop_size * self.crop_size)

    def _concat(self, key: str, dtype: type, width: int) -> np.ndarray:
        parts = []
        for chunk in self._chunks:
            with np.load(chunk.path, allow_pickle=False) as data:
                parts.append(data[key].astype(dtype))
        return np.concatenate(parts) if parts else np.zeros((0, width), dtype)

    def histograms(self) -> np.ndarray:
        """float32 (rows, bins): intensity histograms aligned with ``blobs`` (stored as float16)."""
        if self._histograms is None:
            self._histograms = self._concat("histogram", np.float32, int(self.meta.get("histogram_bins", 0)))
        return self._histograms

    def hu(self) -> np.ndarray:
        """float64 (rows, 7): Hu moments aligned with ``blobs``."""
        if self._hu is None:
            self._hu = self._concat("hu", np.float64, 7)
        return self._hu

    def crops(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (k, s, s): identification images of the given row indices, read on demand.

        Raises SessionError when a row has no image (recorded without images, or the image file
        was cut short by a crash): check ``has_crop`` first to select rows that have one.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        s = self.crop_size
        if rows.size == 0:
            return np.zeros((0, s, s), np.uint8)
        if not np.all(self.has_crop[rows]):
            missing = int(rows[~self.has_crop[rows]][0])
            raise SessionError(f"{self.session_dir / CROPS_FILE}: no identification image for row {missing}")
        images = np.memmap(self.session_dir / CROPS_FILE, dtype=np.uint8, mode="r",
                           shape=(self._crops_on_disk(), s, s))
        return np.array(images[self.crop_index[rows]])

    def coexisting(self, include_crossing: bool = True) -> np.ndarray:
        """int64 (pairs, 2): index pairs (i < j) into ``fragments`` whose [start, end] overlap.

        A sort and sweep: O(F log F + pairs). Crossing fragments are left out when asked.
        """
        keep = np.flatnonzero(include_crossing | ~self.fragments["is_crossing"])
        return coexisting_pairs(self.fragments["start"][keep], self.fragments["end"][keep], keep)

    def fragment_samples(self, max_per_fragment: int, rng: np.random.Generator
                         ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per individual (non-crossing) fragment id: up to ``max_per_fragment`` random samples.

        Returns {fragment: (histograms float32 (k, bins), hu float64 (k, 7))}.
        """
        rows = np.flatnonzero((self.blobs["fragment"] >= 0) & ~self.blobs["is_crossing"])
        if rows.size == 0:
            return {}
        fragment = self.blobs["fragment"][rows]
        order = np.lexsort((rng.random(rows.size), fragment))  # random order inside each fragment
        rows, fragment = rows[order], fragment[order]
        starts = np.flatnonzero(np.r_[True, fragment[1:] != fragment[:-1]])
        rank = np.arange(rows.size) - np.repeat(starts, np.diff(np.r_[starts, rows.size]))
        keep = rank < max_per_fragment
        rows, fragment = rows[keep], fragment[keep]
        histograms, hu = self.histograms()[rows], self.hu()[rows]
        bounds = np.flatnonzero(np.r_[True, fragment[1:] != fragment[:-1], True])
        return {int(fragment[a]): (histograms[a:b], hu[a:b]) for a, b in zip(bounds[:-1], bounds[1:])}


def derive_fragments(blobs: np.ndarray) -> np.ndarray:
    """FRAGMENT_RECORD_DTYPE rows from blob rows (rows with a negative fragment id are skipped).

    identity is the identity of the fragment's last row (the live identity when it ended);
    is_crossing is true when any of its blobs is a crossing blob.
    """
    rows = blobs[blobs["fragment"] >= 0]
    if rows.size == 0:
        return np.zeros(0, FRAGMENT_RECORD_DTYPE)
    rows = rows[np.lexsort((rows["frame"], rows["fragment"]))]
    starts = np.flatnonzero(np.r_[True, rows["fragment"][1:] != rows["fragment"][:-1]])
    ends = np.r_[starts[1:], rows.size] - 1
    out = np.zeros(starts.size, FRAGMENT_RECORD_DTYPE)
    out["fragment"] = rows["fragment"][starts]
    out["start"] = rows["frame"][starts]
    out["end"] = rows["frame"][ends]
    out["n_samples"] = ends - starts + 1
    out["is_crossing"] = np.logical_or.reduceat(rows["is_crossing"], starts)
    out["identity"] = rows["identity"][ends]
    return out


def coexisting_pairs(start: np.ndarray, end: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """int64 (pairs, 2): pairs of intervals whose inclusive [start, end] overlap, as (label_i, label_j).

    Sorted by start, interval i overlaps every later j with start_j <= end_i: one searchsorted gives
    how many, and the pairs are built without a Python loop. labels defaults to 0..n-1.
    """
    labels = np.arange(start.size) if labels is None else np.asarray(labels)
    order = np.argsort(start, kind="stable")
    s, e, lab = start[order], end[order], labels[order]
    hi = np.searchsorted(s, e, side="right")  # intervals starting at or before my end
    first = np.arange(s.size) + 1
    counts = np.maximum(hi - first, 0)
    i = np.repeat(np.arange(s.size), counts)
    j = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(first, counts)
    pairs = np.stack([lab[i], lab[j]], axis=1).astype(np.int64)
    return np.sort(pairs, axis=1)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SessionError(f"{path}: unreadable session metadata: {exc}".splitlines()[0]) from None


def _load_chunks(blobs_dir: Path) -> tuple[list[_Chunk], list[np.ndarray], int]:
    """The readable chunks, their rows and the frame count; a damaged last chunk is ignored."""
    paths = sorted(blobs_dir.glob("chunk_*.npz")) if blobs_dir.is_dir() else []  # *.npz.tmp excluded
    chunks, rows, n_frames = [], [], 0
    for k, path in enumerate(paths):
        try:
            with np.load(path, allow_pickle=False) as data:
                part = data["blobs"]
                crop_offset = int(data["crop_offset"])
                frame_range = data["frame_range"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            if k == len(paths) - 1:
                log.warning("%s: damaged last chunk ignored (%s)", path, exc)
                break
            raise SessionError(f"{path}: damaged chunk in the middle of the session: {exc}") from None
        if part.dtype != BLOB_RECORD_DTYPE:
            raise SessionError(f"{path}: blob rows have an unknown layout")
        chunks.append(_Chunk(path, len(part), crop_offset))
        rows.append(part)
        n_frames = max(n_frames, int(frame_range[1]) + 1)
    return chunks, rows, n_frames


def _load_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for k, line in enumerate(lines):
        try:
            events.append(json.loads(line))
        except ValueError:
            if k == len(lines) - 1:  # a line cut by a crash
                log.warning("%s: truncated last line ignored", path)
                break
            raise SessionError(f"{path}: line {k + 1} is not JSON") from None
    return events


def load_session(session_dir: str | Path) -> Session:
    """Load a session folder written by SessionWriter, also one cut short by a crash."""
    folder = Path(session_dir)
    if not folder.is_dir():
        raise SessionError(f"{folder}: not a session folder (no such directory)")
    if not (folder / SESSION_JSON).exists():
        raise SessionError(f"{folder}: not a session folder (missing {SESSION_JSON})")
    meta = _read_json(folder / SESSION_JSON)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise SessionError(f"{folder / SESSION_JSON}: unknown format version {found!r} (expected {FORMAT!r})")
    if not (folder / PARAMETERS_TOML).exists():
        raise SessionError(f"{folder}: missing file {PARAMETERS_TOML}")
    try:
        parameters = tomllib.loads((folder / PARAMETERS_TOML).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SessionError(f"{folder / PARAMETERS_TOML}: TOML syntax error: {exc}") from None
    background = None
    if meta.get("background"):
        if not (folder / BACKGROUND_PNG).exists():
            raise SessionError(f"{folder}: missing file {BACKGROUND_PNG}")
        background = cv2.imread(str(folder / BACKGROUND_PNG), cv2.IMREAD_GRAYSCALE)
        if background is None:
            raise SessionError(f"{folder / BACKGROUND_PNG}: cannot read the background image")
    chunks, rows, n_frames = _load_chunks(folder / BLOBS_DIR)
    blobs = np.concatenate(rows) if rows else np.zeros(0, BLOB_RECORD_DTYPE)
    events = _load_events(folder / EVENTS_FILE)
    return Session(folder, meta, parameters, background, chunks, blobs, n_frames, events)
