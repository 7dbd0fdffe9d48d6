"""Ground truth for the evaluation: true positions of the animals, read from a long-format CSV.

``frame,id,x,y`` and an optional ``crossing`` column (0/1, written by the simulator), one row per
animal and frame, in any order; 0-based frames, pixels. Ids may be integers or any labels.
"""
from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from ..errors import ToxrtError

logger = logging.getLogger(__name__)

Label = Union[int, str]

# Elements of a (frames, M, N) block computed at once; bounds memory to tens of MB.
CHUNK_ELEMENTS = 2_000_000
_TRUTHY = {"1", "true", "True", "TRUE", "yes"}
_FALSY = {"0", "false", "False", "FALSE", "no", ""}


class GroundTruthError(ToxrtError):
    """A ground-truth CSV is missing, malformed, or does not fit the predictions."""


@dataclass
class GroundTruth:
    """True positions of M animals over F annotated frames.

    frames    int64   (F,)       0-based frame indices, strictly increasing
    ids       list of M labels   as written in the CSV (ints when every id is an integer)
    positions float64 (F, M, 2)  x, y in pixels; NaN where the animal is not annotated
    crossing  bool    (F, M)     or None when the CSV has no ``crossing`` column; then
                                 :meth:`crossing_mask` derives it from proximity
    """

    frames: np.ndarray
    ids: list[Label]
    positions: np.ndarray
    crossing: np.ndarray | None = None

    @staticmethod
    def from_csv(path: str | Path) -> "GroundTruth":
        """Read a long-format CSV with header ``frame,id,x,y`` and an optional ``crossing`` (0/1).

        Rows may come in any order; an empty or ``nan`` x/y marks an absent point.
        """
        path = Path(path)
        try:
            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))
        except FileNotFoundError:
            raise GroundTruthError(f"{path}: ground-truth file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise GroundTruthError(f"{path}: cannot read ground-truth file: {exc}") from None
        if not rows:
            raise GroundTruthError(f"{path}: empty file; expected a header frame,id,x,y")
        header = [name.strip().lower() for name in rows[0]]
        missing = [name for name in ("frame", "id", "x", "y") if name not in header]
        if missing:
            raise GroundTruthError(f"{path}: header {rows[0]!r} lacks column(s) {missing}; expected frame,id,x,y")
        col = {name: header.index(name) for name in ("frame", "id", "x", "y")}
        crossing_col = header.index("crossing") if "crossing" in header else None
        return _parse_rows(path, rows[1:], col, crossing_col)

    def to_csv(self, path: str | Path) -> None:
        """Write the long format read by :meth:`from_csv` (absent points are left out)."""
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["frame", "id", "x", "y"] + (["crossing"] if self.crossing is not None else []))
            rows, cols = np.nonzero(~np.isnan(self.positions).any(axis=-1))
            for f, m in zip(rows, cols):
                x, y = self.positions[f, m]
                row = [int(self.frames[f]), self.ids[m], repr(float(x)), repr(float(y))]
                if self.crossing is not None:
                    row.append(int(self.crossing[f, m]))
                writer.writerow(row)

    @property
    def present(self) -> np.ndarray:
        """bool (F, M): the animal is annotated in the frame."""
        return ~np.isnan(self.positions).any(axis=-1)

    def crossing_mask(self, body_length: float) -> np.ndarray:
        """bool (F, M): the CSV's crossing flags, else another animal within ``body_length`` px."""
        if self.crossing is not None:
            return self.crossing & self.present
        m = self.positions.shape[1]
        near = np.zeros(self.positions.shape[:2], bool)
        not_self = ~np.eye(m, dtype=bool)
        for sl in frame_chunks(len(self.frames), m * m):
            d2 = pairwise_d2(self.positions[sl], self.positions[sl])
            near[sl] = ((d2 <= body_length ** 2) & not_self).any(axis=-1)
        return near


def _label_key(label: str) -> list[Any]:
    """Natural sort key: 'track_10' after 'track_2'."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label) if part]


def _parse_rows(path: Path, rows: list[list[str]], col: dict[str, int], crossing_col: int | None) -> GroundTruth:
    width = max(list(col.values()) + [crossing_col or 0]) + 1
    frames_raw: list[int] = []
    labels_raw: list[str] = []
    xy_raw: list[tuple[float, float]] = []
    cross_raw: list[bool] = []
    for line, row in enumerate(rows, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < width:
            raise GroundTruthError(f"{path}: line {line} has {len(row)} fields, expected {width}")
        try:
            frame = int(float(row[col["frame"]]))
            x = float(row[col["x"]]) if row[col["x"]].strip() else math.nan
            y = float(row[col["y"]]) if row[col["y"]].strip() else math.nan
        except ValueError:
            raise GroundTruthError(f"{path}: line {line}: frame, x and y must be numbers, got {row!r}") from None
        if frame < 0:
            raise GroundTruthError(f"{path}: line {line}: negative frame {frame}")
        label = row[col["id"]].strip()
        if not label:
            raise GroundTruthError(f"{path}: line {line}: empty id")
        frames_raw.append(frame)
        labels_raw.append(label)
        xy_raw.append((x, y))
        if crossing_col is not None:
            text = row[crossing_col].strip()
            if text not in _TRUTHY and text not in _FALSY:
                raise GroundTruthError(f"{path}: line {line}: crossing must be 0 or 1, got {text!r}")
            cross_raw.append(text in _TRUTHY)
    if not frames_raw:
        raise GroundTruthError(f"{path}: no data rows after the header")

    unique_labels = sorted(set(labels_raw), key=_label_key)
    if all(re.fullmatch(r"-?\d+", label) for label in unique_labels):
        ids: list[Label] = sorted(int(label) for label in unique_labels)
        column_of = {str(label): m for m, label in enumerate(ids)}
        # "007" and "7" are the same animal once read as integers
        column_of.update({label: column_of[str(int(label))] for label in unique_labels})
    else:
        ids = list(unique_labels)
        column_of = {label: m for m, label in enumerate(ids)}

    frame_arr = np.asarray(frames_raw, np.int64)
    frames, row_of = np.unique(frame_arr, return_inverse=True)
    cols = np.fromiter((column_of[label] for label in labels_raw), np.int64, len(labels_raw))
    flat = row_of * len(ids) + cols
    if np.unique(flat).size != flat.size:
        dup = np.flatnonzero(np.bincount(flat) > 1)[0]
        raise GroundTruthError(f"{path}: frame {frames[dup // len(ids)]} lists id {ids[dup % len(ids)]!r} twice")
    positions = np.full((frames.size, len(ids), 2), np.nan)
    positions[row_of, cols] = np.asarray(xy_raw, np.float64)
    crossing = None
    if crossing_col is not None:
        crossing = np.zeros((frames.size, len(ids)), bool)
        crossing[row_of, cols] = cross_raw
    logger.debug("%s: %d frames, %d animals", path, frames.size, len(ids))
    return GroundTruth(frames=frames, ids=ids, positions=positions, crossing=crossing)


def frame_chunks(n_frames: int, elements_per_frame: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, elements_per_frame))
    for start in range(0, n_frames, step):
        yield slice(start, min(start + step, n_frames))


def pairwise_d2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distances float64 (F, M, N) between a (F, M, 2) and b (F, N, 2); NaN if either is."""
    delta = a[:, :, None, :] - b[:, None, :, :]
    return np.einsum("fmnk,fmnk->fmn", delta, delta)
