"""Fragments and their coexistence, from recorded blob rows: the one owner of these facts.

Terms follow idtracker.ai v6 (Torrents et al. 2025, Appendix 1): a *fragment* is a run of blobs of
one animal between crossings (the linker's fragment ids, ``linker.py``); two fragments *coexist*
when their [start, end] frame intervals overlap, so they cannot be the same animal; a *global
fragment* is a set of N individual fragments that share a frame in which no blob is a crossing.

Everything here is numpy on plain arrays (``BLOB_RECORD_DTYPE`` rows and index arrays), used alike
by the session loader (``io/session_reader.py``), the end of a session (``session_identities.py``,
``fusion.py``, ``accumulation.py``) and ``toxrt refine`` (``offline/``).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import Iterator

import numpy as np

from .errors import SessionError
from .types import FRAGMENT_RECORD_DTYPE


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


def overlapping(start: np.ndarray, end: np.ndarray, first: int, last: int) -> np.ndarray:
    """bool: which inclusive intervals [start, end] overlap [first, last] (coexist with that fragment)."""
    return (start <= last) & (end >= first)


def coexisting_pairs(start: np.ndarray, end: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """int64 (P, 2): all pairs of intervals whose inclusive [start, end] overlap, as (label_i, label_j)
    with label_i < label_j, sorted; ``labels`` defaults to 0..n-1.

    Sorted by start, interval i overlaps exactly the later-starting intervals whose start is <= its
    end: one searchsorted gives how many, and the pairs are built without a Python loop.
    """
    start, end = np.asarray(start), np.asarray(end)
    labels = np.arange(start.size) if labels is None else np.asarray(labels)
    if start.size < 2:
        return np.zeros((0, 2), np.int64)
    order = np.argsort(start, kind="stable")
    stop = np.searchsorted(start[order], end[order], side="right")  # first later interval starting after my end
    count = np.maximum(stop - np.arange(start.size) - 1, 0)
    first = np.repeat(np.arange(start.size), count)
    within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + 1  # 1..count[i]
    a, b = labels[order[first]], labels[order[first + within]]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def connectivity(coexisting: float, fragments: int, number_of_animals: int) -> float:
    """Mean number of fragments coexisting with each fragment / (N - 1) (idtracker.ai v6, Results);
    ``coexisting``: the number of coexisting pairs."""
    if fragments == 0 or number_of_animals < 2:
        return 0.0
    return 2.0 * coexisting / fragments / (number_of_animals - 1)


@dataclass(frozen=True)
class FragmentTable:
    """The individual (non-crossing) fragments of a session and their blob rows.

    ids           int64 (F,)  fragment ids as recorded, sorted
    start, end    int64 (F,)  first and last frame (inclusive)
    n_images      int64 (F,)  identification images (blob rows) of each fragment
    offsets       int64 (F+1,) fragment f's rows are ``rows[offsets[f]:offsets[f+1]]``
    rows          int64 (R,)  blob row indices, grouped by fragment, in frame order
    live_identity int32 (F,)  live identity 1..N of each fragment's last row, 0 when none
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
        both = both[np.lexsort((both[:, 1], both[:, 0]))]
        ptr = np.zeros(len(self) + 1, np.int64)
        np.cumsum(np.bincount(both[:, 0], minlength=len(self)), out=ptr[1:])
        return ptr, both[:, 1].copy()

    def connectivity(self, number_of_animals: int) -> float:
        return connectivity(len(self.pairs), len(self), number_of_animals)


def build_fragment_table(blobs: np.ndarray) -> FragmentTable:
    """The individual fragments of a session's blob rows, their rows and their coexistence.

    Crossing fragments are left out (their identities come from the crossing gap filling).
    Raises SessionError when the blob rows do not carry the recorded fields.
    """
    for name in ("frame", "fragment", "is_crossing"):
        if blobs.dtype.names is None or name not in blobs.dtype.names:
            raise SessionError(f"session blob rows lack the field {name!r}: old or unknown format")
    individual = np.flatnonzero(~blobs["is_crossing"] & (blobs["fragment"] >= 0))
    frag_of_row = blobs["fragment"][individual]
    order = np.lexsort((blobs["frame"][individual], frag_of_row))  # by fragment, then frame
    rows = individual[order].astype(np.int64)
    ids, first, n_images = np.unique(frag_of_row[order], return_index=True, return_counts=True)
    offsets = np.zeros(ids.shape[0] + 1, np.int64)
    offsets[:-1] = first
    offsets[-1] = rows.shape[0]
    frames = blobs["frame"][rows]
    start = frames[offsets[:-1]].astype(np.int64) if len(ids) else np.zeros(0, np.int64)
    end = frames[offsets[1:] - 1].astype(np.int64) if len(ids) else np.zeros(0, np.int64)
    live = np.zeros(ids.shape[0], np.int32)
    if len(ids) and "identity" in blobs.dtype.names:
        live[:] = blobs["identity"][rows[offsets[1:] - 1]]
    return FragmentTable(ids=ids.astype(np.int64), start=start, end=end, n_images=n_images.astype(np.int64),
                         offsets=offsets, rows=rows, live_identity=live, pairs=coexisting_pairs(start, end))


def global_fragments(table: FragmentTable, blobs: np.ndarray, number_of_animals: int) -> np.ndarray:
    """int64 (G, N): distinct sets of N individual fragments that share a frame without crossings
    (table indices), the one whose shortest fragment is longest first (idtracker.ai seeds from it).
    """
    n = number_of_animals
    if len(table) < n or n < 1:
        return np.zeros((0, n), np.int64)
    frag_index = table.fragment_of_image()
    frames = blobs["frame"][table.rows]
    crossing_frames = np.unique(blobs["frame"][blobs["is_crossing"]])  # cannot hold N separate animals
    uniq, inverse, counts = np.unique(frames, return_inverse=True, return_counts=True)
    full = (counts == n) & ~np.isin(uniq, crossing_frames)
    if not full.any():
        return np.zeros((0, n), np.int64)
    keep = full[inverse]
    order = np.lexsort((frag_index[keep], frames[keep]))
    sets = np.unique(frag_index[keep][order].reshape(-1, n), axis=0)
    shortest = table.n_images[sets].min(axis=1)
    return sets[np.argsort(-shortest, kind="stable")]


@dataclass(frozen=True)
class FragmentGraph:
    """Individual fragments and their coexistence, as plain arrays (F fragments).

    n_images int64 (F,); start, end int64 (F,) first and last frame; ptr int64 (F+1,), adj int64:
    fragment f coexists with ``adj[ptr[f]:ptr[f+1]]``; global_sets int64 (G, N): sets of N fragments
    alive together in a frame with no crossing, best (longest shortest fragment) first.
    """

    n_images: np.ndarray
    start: np.ndarray
    end: np.ndarray
    ptr: np.ndarray
    adj: np.ndarray
    global_sets: np.ndarray

    def __len__(self) -> int:
        return int(self.n_images.shape[0])

    def neighbours(self, f: int) -> np.ndarray:
        return self.adj[self.ptr[f]:self.ptr[f + 1]]

    def connectivity(self, number_of_animals: int) -> float:
        return connectivity(self.adj.shape[0] / 2, len(self), number_of_animals)


def fragment_graph(table: FragmentTable, blobs: np.ndarray, number_of_animals: int) -> FragmentGraph:
    """The table's fragments as a :class:`FragmentGraph`, with their global fragments."""
    ptr, adj = table.neighbours()
    return FragmentGraph(table.n_images, table.start, table.end, ptr, adj,
                         global_fragments(table, blobs, number_of_animals))


def alive_sets(start: np.ndarray, end: np.ndarray, candidates: np.ndarray) -> Iterator[set[int]]:
    """Sweep over frames: the set of candidate fragments alive after each change (one shared set,
    changed in place: copy what you keep)."""
    events = sorted([(int(start[i]), 1, int(i)) for i in candidates] + [(int(end[i]) + 1, -1, int(i)) for i in candidates])
    alive: set[int] = set()
    for _, at_time in groupby(events, key=lambda e: e[0]):
        for _, change, i in at_time:
            if change > 0:
                alive.add(i)
            else:
                alive.discard(i)
        yield alive


def complete_groups(start: np.ndarray, end: np.ndarray, candidates: np.ndarray, size: int) -> list[np.ndarray]:
    """Sets of exactly ``size`` candidate fragments alive together at some frame (sorted index arrays)."""
    groups = {tuple(sorted(alive)): None for alive in alive_sets(start, end, candidates) if len(alive) == size}
    return [np.array(g, np.intp) for g in groups]


def largest_alive_group(start: np.ndarray, end: np.ndarray, length: np.ndarray,
                        candidates: np.ndarray | None = None) -> np.ndarray:
    """The largest set of (candidate) fragments alive together, sorted (ties: the one whose shortest
    fragment is longest, then the earliest)."""
    candidates = np.arange(len(start)) if candidates is None else candidates
    best: tuple[int, int] = (0, 0)
    group = np.zeros(0, np.intp)
    for alive in alive_sets(start, end, candidates):
        if alive:
            key = (len(alive), int(min(length[i] for i in alive)))
            if key > best:
                best, group = key, np.array(sorted(alive), np.intp)
    return group
