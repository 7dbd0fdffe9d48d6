"""Fragments, their coexistence, and identification images read on demand from a session.

Everything here depends only on these attributes of a loaded session (duck typing, see
``toxrt.io.session_reader.Session``):

``meta``       dict with at least ``number_of_animals``
``blobs``      rows of ``BLOB_RECORD_DTYPE`` (one per blob per frame)
``fragments``  rows of ``FRAGMENT_RECORD_DTYPE``
``crops(rows)`` uint8 (k, s, s) identification images of the given blob rows (memmap-backed)

No torch here: the arrays are plain numpy and the images come out as float32 batches.
Terms follow idtracker.ai v6 (Torrents et al. 2025, Appendix 1): a *fragment* is a run of blobs of
one animal between crossings; two fragments *coexist* when their [start, end] frame intervals
overlap; a *global fragment* is a set of N individual fragments that share a frame.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

from ..errors import SessionError

log = logging.getLogger(__name__)

# Fragments with fewer images are left out of training (paper, Appendix 2 "Pairs selection").
MIN_TRAINING_IMAGES = 4


class SessionLike(Protocol):
    """What the offline stage reads from a session (see module docstring)."""

    meta: dict[str, Any]
    blobs: np.ndarray
    fragments: np.ndarray

    def crops(self, rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class FragmentTable:
    """The individual (non-crossing) fragments of a session and their images.

    ids           int64 (F,)  fragment ids as recorded
    start, end    int64 (F,)  first and last frame (inclusive)
    n_images      int64 (F,)  identification images (blob rows) of each fragment
    offsets       int64 (F+1,) fragment f's rows are ``rows[offsets[f]:offsets[f+1]]``
    rows          int64 (R,)  blob row indices, grouped by fragment, in frame order
    live_identity int32 (F,)  live ToxId identity 1..N, 0 when none
    pairs         int64 (P, 2) coexisting fragment pairs (indices into the table, i < j)
    """

    ids: np.ndarray
    start: np.ndarray
    end: np.ndarray
    n_images: np.ndarray
    offsets: np.ndarray
    rows: np.ndarray
    live_identity: np.ndarray
    pairs: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def fragment_of_image(self) -> np.ndarray:
        """int64 (R,): table index of the fragment of each entry of ``rows``."""
        return np.repeat(np.arange(len(self)), self.n_images)

    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """Coexistence as CSR: fragment f coexists with ``adj[ptr[f]:ptr[f+1]]``."""
        both = np.concatenate([self.pairs, self.pairs[:, ::-1]])
        order = np.lexsort((both[:, 1], both[:, 0]))
        both = both[order]
        ptr = np.zeros(len(self) + 1, np.int64)
        np.cumsum(np.bincount(both[:, 0], minlength=len(self)), out=ptr[1:])
        return ptr, both[:, 1].copy()

    def connectivity(self, number_of_animals: int) -> float:
        """Mean number of fragments coexisting with each fragment / (N - 1) (paper, Results)."""
        if len(self) == 0 or number_of_animals < 2:
            return 0.0
        return 2.0 * len(self.pairs) / len(self) / (number_of_animals - 1)


def coexisting_pairs(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """int64 (P, 2): all index pairs (i < j) whose [start, end] intervals overlap.

    With fragments sorted by start, fragment i overlaps exactly the later-starting fragments
    whose start is <= end[i]; so the pairs are ranges found with one searchsorted.
    """
    n = start.shape[0]
    if n < 2:
        return np.zeros((0, 2), np.int64)
    order = np.argsort(start, kind="stable")
    s_sorted = start[order]
    e_sorted = end[order]
    stop = np.searchsorted(s_sorted, e_sorted, side="right")  # first later fragment starting after end
    count = np.maximum(stop - np.arange(n) - 1, 0)
    first = np.repeat(np.arange(n), count)
    # position within each run: 1..count[i]
    within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + 1
    second = first + within
    a, b = order[first], order[second]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)


def build_fragment_table(session: SessionLike) -> FragmentTable:
    """Collect the individual fragments of a session, their image rows and their coexistence.

    Crossing fragments are left out (their identities come from the crossing gap filling).
    Raises SessionError when the blob rows do not carry the recorded fields.
    """
    blobs = session.blobs
    for name in ("frame", "fragment", "is_crossing"):
        if blobs.dtype.names is None or name not in blobs.dtype.names:
            raise SessionError(f"session blob rows lack the field {name!r}: old or unknown format")
    individual = np.flatnonzero(~blobs["is_crossing"] & (blobs["fragment"] >= 0))
    frag_of_row = blobs["fragment"][individual]
    # rows grouped by fragment id, in frame order inside each fragment
    order = np.lexsort((blobs["frame"][individual], frag_of_row))
    rows = individual[order].astype(np.int64)
    ids, first, n_images = np.unique(frag_of_row[order], return_index=True, return_counts=True)
    offsets = np.zeros(ids.shape[0] + 1, np.int64)
    offsets[:-1] = first
    offsets[-1] = rows.shape[0]
    frames = blobs["frame"][rows]
    start = frames[offsets[:-1]].astype(np.int64) if len(ids) else np.zeros(0, np.int64)
    end = frames[offsets[1:] - 1].astype(np.int64) if len(ids) else np.zeros(0, np.int64)
    live = _live_identities(session, ids, rows, offsets)
    return FragmentTable(ids=ids.astype(np.int64), start=start, end=end, n_images=n_images.astype(np.int64),
                         offsets=offsets, rows=rows, live_identity=live, pairs=coexisting_pairs(start, end))


def _live_identities(session: SessionLike, ids: np.ndarray, rows: np.ndarray,
                     offsets: np.ndarray) -> np.ndarray:
    """Live identity of each fragment: the fragment record's final decision, else its last row's."""
    live = np.zeros(ids.shape[0], np.int32)
    if len(ids) == 0:
        return live
    if "identity" in (session.blobs.dtype.names or ()):
        live[:] = session.blobs["identity"][rows[offsets[1:] - 1]]
    records = session.fragments
    if records is not None and len(records) and "identity" in (records.dtype.names or ()):
        where = np.searchsorted(ids, records["fragment"])
        found = (where < len(ids))
        found[found] &= ids[where[found]] == records["fragment"][found]
        decided = found & (records["identity"] > 0)
        live[where[decided]] = records["identity"][decided]
    return live


def live_identities_from_trajectories(table: FragmentTable, blobs: np.ndarray,
                                      trajectories: np.ndarray) -> np.ndarray:
    """int32 (F,): each fragment's identity in the live trajectories, 0 where they do not place it.

    The live output's identities come from the end-of-session fusion, which the blob rows do not
    record (their ``identity`` is the decision live at that frame). The trajectories hold each
    identified blob's centroid in its identity's column, so a row's identity is the column whose
    position equals the row's (x, y); a fragment takes the identity most of its rows have.
    ``trajectories`` is float (T, N, 2), NaN where missing.
    """
    n = trajectories.shape[1]
    live = np.zeros(len(table), np.int32)
    if len(table) == 0 or n == 0:
        return live
    frames = blobs["frame"][table.rows]
    inside = frames < trajectories.shape[0]
    votes = np.zeros((len(table), n + 1), np.int64)
    frag = table.fragment_of_image()
    for lo in range(0, table.rows.shape[0], 65536):  # bounded (chunk, N, 2) temporaries
        sl = slice(lo, lo + 65536)
        where = table.rows[sl][inside[sl]]
        at = trajectories[blobs["frame"][where]]  # (k, N, 2)
        same = (np.abs(at[..., 0] - blobs["x"][where, None]) < 1e-3) & \
               (np.abs(at[..., 1] - blobs["y"][where, None]) < 1e-3)
        column = np.where(same.any(axis=1), same.argmax(axis=1) + 1, 0)
        np.add.at(votes, (frag[sl][inside[sl]], column), 1)
    best = votes[:, 1:].argmax(axis=1) + 1
    has = votes[:, 1:].max(axis=1) > 0
    live[has] = best[has]
    return live


def trainable(table: FragmentTable, min_images: int = MIN_TRAINING_IMAGES) -> np.ndarray:
    """bool (F,): fragments with enough images to sample pairs from."""
    return table.n_images >= min_images


def global_fragments(table: FragmentTable, blobs: np.ndarray, number_of_animals: int) -> np.ndarray:
    """int64 (G, N): distinct sets of N individual fragments that share a frame (table indices).

    Sorted so that the global fragment whose shortest fragment is longest comes first: the
    paper initialises K-means from that one (Appendix 2, "Clustering and assignment").
    """
    n = number_of_animals
    if len(table) < n or n < 1:
        return np.zeros((0, n), np.int64)
    frag_index = table.fragment_of_image()
    frames = blobs["frame"][table.rows]
    # frames where any crossing blob exists cannot hold N separate individuals
    crossing_frames = np.unique(blobs["frame"][blobs["is_crossing"]])
    uniq, inverse, counts = np.unique(frames, return_inverse=True, return_counts=True)
    full = (counts == n) & ~np.isin(uniq, crossing_frames)
    if not full.any():
        return np.zeros((0, n), np.int64)
    keep = full[inverse]
    order = np.lexsort((frag_index[keep], frames[keep]))
    sets = frag_index[keep][order].reshape(-1, n)
    sets = np.unique(sets, axis=0)
    shortest = table.n_images[sets].min(axis=1)
    return sets[np.argsort(-shortest, kind="stable")]


class ImageLoader:
    """Identification images read on demand and resized to ``image_size`` (memory stays flat).

    ``load(rows)`` returns float32 (k, 1, S, S) in [0, 1]. Rows are read in sorted order (sequential
    memmap access) and returned in the order asked.
    """

    def __init__(self, session: SessionLike, image_size: int) -> None:
        self._session = session
        self.image_size = int(image_size)

    def load(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            return np.zeros((0, 1, self.image_size, self.image_size), np.float32)
        uniq, inverse = np.unique(rows, return_inverse=True)
        crops = np.asarray(self._session.crops(uniq))
        if crops.ndim != 3 or crops.shape[0] != uniq.shape[0]:
            raise SessionError(f"session returned identification images of shape {crops.shape} "
                               f"for {uniq.shape[0]} rows")
        images = resize_batch(crops, self.image_size)
        out = images[inverse].astype(np.float32)
        out *= 1.0 / 255.0
        return out[:, None]


def resize_batch(crops: np.ndarray, size: int) -> np.ndarray:
    """uint8 (k, s, s) -> uint8 (k, size, size), area interpolation when shrinking.

    One cv2.resize per image (~15 us at 40 px): OpenCV's area resize takes at most 4 channels, so
    stacking images as channels is not an option.
    """
    k, s, _ = crops.shape
    if s == size:
        return crops
    interp = cv2.INTER_AREA if size < s else cv2.INTER_LINEAR
    out = np.empty((k, size, size), np.uint8)
    for i in range(k):
        out[i] = cv2.resize(crops[i], (size, size), interpolation=interp)
    return out


def check_session(session: SessionLike, where: str) -> int:
    """Validate what the offline stage needs; returns the number of animals.

    Raises SessionError (one line naming ``where``) for an old format, a missing animal count, or a
    session recorded without identification images.
    """
    meta = getattr(session, "meta", None)
    if not isinstance(meta, dict):
        raise SessionError(f"{where}: not a toxrt session (no session metadata)")
    n = int(meta.get("number_of_animals", 0) or 0)
    if n < 1:
        raise SessionError(f"{where}: session.json has no number_of_animals; refinement needs it")
    if int(meta.get("identification_image_size", 0) or 0) <= 0 or meta.get("identification_images") is False:
        raise SessionError(f"{where}: session was recorded without identification images "
                           "(recording.identification_images = false); refinement needs them")
    blobs = session.blobs
    if len(blobs) == 0:
        raise SessionError(f"{where}: session has no blob rows")
    has_crop = getattr(session, "has_crop", None)
    if has_crop is not None and not np.any(has_crop):
        raise SessionError(f"{where}: the identification images file is missing or empty; refinement needs it")
    try:
        probe = np.asarray(session.crops(np.array([0, len(blobs) - 1])))
    except (OSError, ValueError, IndexError) as exc:
        raise SessionError(f"{where}: identification images cannot be read ({exc})") from None
    if probe.ndim != 3 or probe.shape[0] != 2:
        raise SessionError(f"{where}: identification images have an unexpected shape {probe.shape}")
    return n
