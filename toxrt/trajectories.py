"""Trajectories from recorded blob rows: positions per frame and identity, crossings filled in.

``assemble`` turns the blob rows of a session and one identity per fragment (the end of the
session's, or ``toxrt refine``'s) into the arrays that ``io/trajectory_files.py`` writes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .types import MISSING_STATUS, Status

log = logging.getLogger(__name__)


def _identity_lookup(fragments: np.ndarray, fragment_identity: dict[int, tuple[int, float]]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised dict lookup: identity (0 when unknown) and probability of each row's fragment."""
    if not fragment_identity:
        return np.zeros(fragments.size, np.int64), np.zeros(fragments.size)
    keys = np.fromiter(fragment_identity.keys(), np.int64, len(fragment_identity))
    values = np.array(list(fragment_identity.values()), dtype=np.float64).reshape(-1, 2)
    order = np.argsort(keys)
    keys, values = keys[order], values[order]
    pos = np.clip(np.searchsorted(keys, fragments), 0, keys.size - 1)
    found = keys[pos] == fragments
    identity = np.where(found, values[pos, 0], 0).astype(np.int64)
    probability = np.where(found, values[pos, 1], 0.0)
    return identity, probability


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances (k,) of points (k, 2) to the segment from a to b (each (2,))."""
    ab = b - a
    length2 = float(ab @ ab)
    t = np.zeros(len(points)) if length2 == 0 else np.clip((points - a) @ ab / length2, 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


@dataclass
class Assembled:
    """Per-frame, per-identity results of ``assemble`` (shapes: T frames, N identities).

    trajectories     float64 (T, N, 2) NaN where missing
    id_probabilities float64 (T, N, 1) 0 where missing, NaN where the position is a crossing blob's
    status           int8    (T, N)    -1 where missing, else types.Status
    areas            float64 (T, N)    area of the individual blob that gave the position, else NaN
    """

    trajectories: np.ndarray
    id_probabilities: np.ndarray
    status: np.ndarray
    areas: np.ndarray


def assemble(
    blobs: np.ndarray,
    fragment_identity: dict[int, tuple[int, float]],
    n_frames: int,
    number_of_animals: int,
    max_crossing_gap: int,
    max_crossing_distance_px: float | None = None,
) -> Assembled:
    """Positions per frame and identity from blob rows and the identities of their fragments.

    blobs: BLOB_RECORD_DTYPE rows. fragment_identity: fragment id -> (identity 1..N, probability).
    Individual (non-crossing) blobs of identified fragments give the positions, with the row's own
    status, the fragment's probability and the blob's area. When two rows claim one (frame,
    identity), the more probable wins. Then, per identity, a gap of at most ``max_crossing_gap``
    frames between two known positions is filled, frame by frame, with the centroid of the crossing
    blob nearest to the segment joining the positions before and after the gap (status CROSSING,
    probability NaN as in idtracker.ai: inside a crossing the identity is inferred, not measured). A
    crossing blob farther from that segment than ``max_crossing_distance_px`` (default: twice the
    square root of the blob's area, about its length) cannot hold the animal, and the frame stays
    missing. Cells without a position get probability 0.
    """
    n = number_of_animals
    trajectories = np.full((n_frames, n, 2), np.nan)
    probabilities = np.zeros((n_frames, n))
    status = np.full((n_frames, n), MISSING_STATUS, np.int8)
    areas = np.full((n_frames, n), np.nan)

    identity, probability = _identity_lookup(blobs["fragment"], fragment_identity)
    use = (~blobs["is_crossing"] & (identity >= 1) & (identity <= n)
           & (blobs["frame"] >= 0) & (blobs["frame"] < n_frames))
    rows = np.flatnonzero(use)
    cell = blobs["frame"][rows] * n + identity[rows] - 1
    order = np.lexsort((probability[rows], cell))  # by cell, the most probable last
    rows, cell = rows[order], cell[order]
    last = np.r_[cell[1:] != cell[:-1], True][:cell.size]
    if (~last).sum():
        log.warning("%d rows lost a (frame, identity) conflict to a more probable row", int((~last).sum()))
    rows, cell = rows[last], cell[last]
    frame, animal = np.divmod(cell, n) if n else (cell, cell)
    trajectories[frame, animal, 0] = blobs["x"][rows]
    trajectories[frame, animal, 1] = blobs["y"][rows]
    probabilities[frame, animal] = probability[rows]
    status[frame, animal] = blobs["status"][rows]
    areas[frame, animal] = blobs["area"][rows]

    _fill_crossing_gaps(blobs, trajectories, probabilities, status, max_crossing_gap, max_crossing_distance_px)
    return Assembled(trajectories, probabilities[:, :, None], status, areas)


def assemble_trajectories(blobs: np.ndarray, fragment_identity: dict[int, tuple[int, float]], n_frames: int,
                          number_of_animals: int, max_crossing_gap: int,
                          max_crossing_distance_px: float | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``assemble`` without the areas: (trajectories, id_probabilities, status)."""
    out = assemble(blobs, fragment_identity, n_frames, number_of_animals, max_crossing_gap,
                   max_crossing_distance_px)
    return out.trajectories, out.id_probabilities, out.status


def _fill_crossing_gaps(blobs: np.ndarray, trajectories: np.ndarray, probabilities: np.ndarray,
                        status: np.ndarray, max_gap: int, max_distance_px: float | None) -> None:
    """Fill short gaps with crossing-blob centroids, in place (see assemble)."""
    n_frames = trajectories.shape[0]
    crossing = blobs[blobs["is_crossing"] & (blobs["frame"] >= 0) & (blobs["frame"] < n_frames)]
    if max_gap <= 0 or crossing.size == 0:
        return
    crossing = crossing[np.argsort(crossing["frame"], kind="stable")]
    first_row = np.searchsorted(crossing["frame"], np.arange(n_frames + 1))  # rows of frame f: [f], [f+1]
    centroids = np.stack([crossing["x"], crossing["y"]], axis=1)
    reach = (np.full(crossing.size, max_distance_px) if max_distance_px is not None
             else 2.0 * np.sqrt(crossing["area"].astype(np.float64)))
    filled = 0
    for animal in range(trajectories.shape[1]):
        known = ~np.isnan(trajectories[:, animal, 0])
        step = np.diff(known.astype(np.int8))
        gap_start = np.flatnonzero(step == -1) + 1  # first missing frame after a known one
        gap_end = np.flatnonzero(step == 1) + 1  # first known frame after a missing one
        if gap_start.size == 0 or gap_end.size == 0:
            continue
        gap_end = gap_end[np.searchsorted(gap_end, gap_start[0]):]  # drop a leading gap
        gap_start = gap_start[:gap_end.size]  # drop a trailing gap
        for start, end in zip(gap_start, gap_end):
            if end - start > max_gap:
                continue
            before, after = trajectories[start - 1, animal], trajectories[end, animal]
            for f in range(start, end):
                a, b = first_row[f], first_row[f + 1]
                if a == b:
                    continue
                distance = _segment_distance(centroids[a:b], before, after)
                best = int(np.argmin(distance))
                if distance[best] > reach[a + best]:
                    continue
                trajectories[f, animal] = centroids[a + best]
                probabilities[f, animal] = np.nan
                status[f, animal] = Status.CROSSING
                filled += 1
    log.debug("filled %d (frame, animal) cells from crossing blobs", filled)
