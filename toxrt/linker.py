"""The linker: blobs of consecutive frames -> fragments, each fragment one animal (or one crossing).

Per frame (ToxTrac's fragment creation, with explicit merge and split handling):

1. Predict every track with the batched constant-velocity Kalman model.
2. Gate each (track, blob) pair by distance to the prediction and by ToxTrac's relative size change
   dS = max(S_i, S_J) / min(S_i, S_J) - 1; solve the gated Hungarian assignment on distance.
3. A track left unmatched whose blob in reach was taken by another track has *merged* into it:
   both individual fragments end and a crossing fragment starts (or grows) on that blob.
   A track left unmatched with only a size-gated blob in reach ends (its gate failed).
   Otherwise it coasts on its prediction for up to ``max_unmatched_frames`` frames, then ends.
4. A blob left unmatched but in reach of a matched track is a *split* of that track: the track's
   fragment ends and every blob of the split starts a new fragment. Other unmatched blobs start
   new fragments (individual, or crossing when the blob is too large for one animal).
5. A crossing fragment that has shown a single-animal-sized blob for ``crossing_release_frames``
   frames without splitting is released into a new individual fragment.

"Too large for one animal" is the segmentation's ``Blobs.oversized``, unless the frame has a blob
for every animal: then a large blob is a large animal (animals of very different sizes, such as a
courting pair of spiders), not a crossing. The linker alone decides which blobs are crossings
(``LinkResult.is_crossing``); the blobs are not changed.

Fragment ids are unique over the session and never reused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import LinkingConfig
from .kalman import ConstantVelocityModel
from .matching import assign
from .types import Blobs


@dataclass
class LinkResult:
    """Fragments of one frame's blobs, and what changed.

    fragment     int64 (n,)  fragment id of each blob
    is_crossing  bool  (n,)  the blob's fragment is a crossing (several animals)
    started      int64 (k,)  fragments that start at this frame
    ended        int64 (e,)  fragments whose last blob was in an earlier frame and that are now closed
    coasting_fragment int64 (p,), coasting_xy float64 (p, 2): individual fragments with no blob this
                 frame, at their predicted position
    crossing_members  crossing fragment id -> individual fragment ids that entered it
    """

    fragment: np.ndarray
    is_crossing: np.ndarray
    started: np.ndarray
    ended: np.ndarray
    coasting_fragment: np.ndarray
    coasting_xy: np.ndarray
    crossing_members: dict[int, list[int]] = field(default_factory=dict)


class Linker:
    """Owns the live tracks; call :meth:`update` once per frame, also with no blobs."""

    def __init__(self, cfg: LinkingConfig, max_distance_px: float, number_of_animals: int = 0):
        """``number_of_animals``: 0 when unknown (every oversized blob then counts as a crossing)."""
        self.cfg = cfg
        self.max_distance_px = max_distance_px
        self.number_of_animals = number_of_animals
        self.model = ConstantVelocityModel(cfg.process_noise, cfg.measurement_noise)
        self.mean = np.zeros((0, 4))
        self.cov = np.zeros((0, 4, 4))
        self.area = np.zeros(0)
        self.fragment = np.zeros(0, np.int64)
        self.unmatched = np.zeros(0, np.int64)
        self.crossing = np.zeros(0, bool)
        self.single_sized_frames = np.zeros(0, np.int64)  # crossing tracks only: frames at one-animal size
        self.members: dict[int, list[int]] = {}  # crossing fragment -> individual fragments inside
        self._next_fragment = 0

    @property
    def n_tracks(self) -> int:
        return int(self.fragment.shape[0])

    def update(self, blobs: Blobs) -> LinkResult:
        n, m = len(blobs), self.n_tracks
        if self.number_of_animals and n >= self.number_of_animals:
            oversized = np.zeros(n, bool)  # a blob for every animal: a large blob is a large animal
        else:
            oversized = blobs.oversized
        self.model.predict(self.mean, self.cov)
        xy = blobs.centroid
        distance = np.sqrt(((self.mean[:, None, :2] - xy[None, :, :]) ** 2).sum(-1)) if m and n else np.zeros((m, n))
        in_reach = distance <= self.max_distance_px
        big, small = np.maximum(self.area[:, None], blobs.area[None]), np.minimum(self.area[:, None], blobs.area[None])
        size_ok = (big / np.maximum(small, 1e-9) - 1.0) <= self.cfg.max_size_change
        # Crossing tracks and crossing-sized blobs change size by nature; the fragment cut happens anyway.
        size_ok |= self.crossing[:, None] | oversized[None, :]
        matches, free_tracks, free_blobs = assign(distance, in_reach & size_ok)

        blob_track = np.full(n, -1, np.int64)
        blob_track[matches[:, 1]] = matches[:, 0]
        ends = np.zeros(m, bool)  # tracks whose fragment closes now
        restart = np.zeros(n, bool)  # matched blobs that must start a new fragment
        merged_into: dict[int, list[int]] = {}  # blob -> tracks that merged into it

        # 3. unmatched tracks: merge, failed gate, or coast
        for t in free_tracks:
            reach = np.flatnonzero(in_reach[t])
            taken = reach[blob_track[reach] >= 0]
            if taken.size:
                j = int(taken[np.argmin(distance[t, taken])])
                merged_into.setdefault(j, []).append(int(t))
                ends[t] = True
            elif reach.size:
                ends[t] = True
            else:
                self.unmatched[t] += 1
                ends[t] |= self.unmatched[t] > self.cfg.max_unmatched_frames
        for j, tracks in merged_into.items():
            owner = int(blob_track[j])
            arrivals = [f for t in tracks for f in self._members_of(t)]
            if self.crossing[owner]:  # a crossing grows: same fragment, more members
                self.members.setdefault(int(self.fragment[owner]), []).extend(arrivals)
                merged_into[j] = []
            else:  # an individual meets others: its fragment ends, a crossing starts on the blob
                restart[j] = ends[owner] = True
                merged_into[j] = self._members_of(owner) + arrivals

        # 4. unmatched blobs in reach of a matched track: that track split
        matched_track = np.zeros(m, bool)
        matched_track[matches[:, 0]] = True
        for j in free_blobs:
            owners = np.flatnonzero(in_reach[:, j] & matched_track)
            for owner in owners:
                ends[owner] = True
                restart[np.flatnonzero(blob_track == owner)] = True

        # 5. crossings that keep a single-animal size are released
        if matches.size:
            rows, cols = matches[:, 0], matches[:, 1]
            crossing_rows = self.crossing[rows]
            self.single_sized_frames[rows[crossing_rows & ~oversized[cols]]] += 1
            self.single_sized_frames[rows[crossing_rows & oversized[cols]]] = 0
            released = rows[crossing_rows & (self.single_sized_frames[rows] >= self.cfg.crossing_release_frames)]
            ends[released] = True
            for owner in released:
                restart[np.flatnonzero(blob_track == owner)] = True

        # Update the tracks that continue.
        keep_match = ~ends[matches[:, 0]] & ~restart[matches[:, 1]] if matches.size else np.zeros(0, bool)
        cont = matches[keep_match]
        if cont.size:
            rows, cols = cont[:, 0], cont[:, 1]
            sub_mean, sub_cov = self.mean[rows], self.cov[rows]
            self.model.update(sub_mean, sub_cov, xy[cols])
            self.mean[rows], self.cov[rows] = sub_mean, sub_cov
            self.area[rows] = blobs.area[cols]
            self.unmatched[rows] = 0

        fragment = np.full(n, -1, np.int64)
        is_crossing = np.zeros(n, bool)
        if cont.size:
            fragment[cont[:, 1]] = self.fragment[cont[:, 0]]
            is_crossing[cont[:, 1]] = self.crossing[cont[:, 0]]

        coasting = ~ends & self.unmatched.astype(bool) & ~self.crossing
        coasting_fragment = self.fragment[coasting].copy()
        coasting_xy = self.mean[coasting, :2].copy()

        ended_fragments = self.fragment[ends].copy()
        for f in ended_fragments[self.crossing[ends]]:
            self.members.pop(int(f), None)
        self._drop(ends)

        # New fragments: unmatched blobs, restarted blobs, merge targets.
        new_blobs = np.flatnonzero(fragment < 0)
        started = np.zeros(0, np.int64)
        if new_blobs.size:
            merge_targets = [j for j, members in merged_into.items() if members]
            crossing_new = oversized[new_blobs] | np.isin(new_blobs, merge_targets)
            started = self._start(xy[new_blobs], blobs.area[new_blobs], crossing_new)
            fragment[new_blobs] = started
            is_crossing[new_blobs] = crossing_new
            for j in merge_targets:
                self.members[int(fragment[j])] = merged_into[j]
        crossing_members = {int(f): self.members[int(f)] for f in fragment[is_crossing] if int(f) in self.members}
        return LinkResult(fragment, is_crossing, started, ended_fragments, coasting_fragment, coasting_xy, crossing_members)

    def close(self) -> np.ndarray:
        """End every live fragment (end of session); returns their ids."""
        ended = self.fragment.copy()
        self._drop(np.ones(self.n_tracks, bool))
        self.members.clear()
        return ended

    def _members_of(self, track: int) -> list[int]:
        fragment = int(self.fragment[track])
        return list(self.members.get(fragment, [])) if self.crossing[track] else [fragment]

    def _drop(self, mask: np.ndarray) -> None:
        if not mask.any():
            return
        keep = ~mask
        self.mean, self.cov, self.area = self.mean[keep], self.cov[keep], self.area[keep]
        self.fragment, self.unmatched = self.fragment[keep], self.unmatched[keep]
        self.crossing, self.single_sized_frames = self.crossing[keep], self.single_sized_frames[keep]

    def _start(self, xy: np.ndarray, area: np.ndarray, crossing: np.ndarray) -> np.ndarray:
        k = xy.shape[0]
        ids = np.arange(self._next_fragment, self._next_fragment + k, dtype=np.int64)
        self._next_fragment += k
        mean, cov = self.model.initiate(xy)
        self.mean = np.concatenate([self.mean, mean])
        self.cov = np.concatenate([self.cov, cov])
        self.area = np.concatenate([self.area, area])
        self.fragment = np.concatenate([self.fragment, ids])
        self.unmatched = np.concatenate([self.unmatched, np.zeros(k, np.int64)])
        self.crossing = np.concatenate([self.crossing, crossing])
        self.single_sized_frames = np.concatenate([self.single_sized_frames, np.zeros(k, np.int64)])
        return ids
