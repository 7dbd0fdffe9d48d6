"""Loading a recorded session folder (written by ``recording.SessionWriter``), read-only, and the
configuration it was tracked with (``load_session_config``).

Fragments and their coexistence are derived from the blob rows (``fragments.py``), so what a ``kill -9`` left on disk
loads as it is: a temporary or damaged last chunk is ignored, a crop file shorter than the rows
leaves those rows without an identification image, a cut last event line is dropped.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..config import Config, build_config, merge_dotted, read_toml
from ..errors import SessionError
from ..fragments import coexisting_pairs, derive_fragments
from ..types import BLOB_RECORD_DTYPE
from .layout import BACKGROUND_PNG, BLOBS_DIR, CROPS_FILE, EVENTS_FILE, FORMAT, PARAMETERS_TOML, SESSION_JSON

log = logging.getLogger(__name__)


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

        ``fragments.coexisting_pairs``: O(F log F + pairs). Crossing fragments are left out when asked.
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
    lines = path.read_bytes().splitlines()
    for k, line in enumerate(lines):
        try:
            events.append(json.loads(line))  # bytes: UTF-8 decoding errors are ValueErrors too
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
    except UnicodeDecodeError as exc:
        raise SessionError(f"{folder / PARAMETERS_TOML}: not UTF-8 text (invalid byte at offset {exc.start})") from None
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


def load_session_config(session_dir: str | Path, path: str | Path | None = None,
                        overrides: dict[str, Any] | None = None) -> Config:
    """A session's parameters.toml, then a parameter file's keys, then dotted-key overrides.

    How the output tools (stats, report, video, export) get their settings: a session tracked with
    ``[stats]`` or ``px_per_cm`` keeps them; a file or flags can change them afterwards.
    """
    parameters = Path(session_dir) / PARAMETERS_TOML
    values = read_toml(parameters) if parameters.exists() else {}
    for key, value in (read_toml(Path(path)) if path is not None else {}).items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    for key, value in (overrides or {}).items():
        merge_dotted(values, key, value)
    return build_config(values)
