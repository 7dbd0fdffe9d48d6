"""The end-of-session ToxId fragment fusion (IdMatrix, Hungarian on complete groups, greedy rest).

After Rodríguez et al. (2018), "ToxId", Sci. Rep. 8:14774, sections "Fragment similarity"
(IdMatrix of Pearson-correlated similarities) and "Fragment assignment".
"""
from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import linear_sum_assignment

from .config import IdentityConfig
from .fragments import complete_groups, largest_alive_group, overlapping
from .similarity import (MAX_PAIRS_PER_BLOCK, check_samples, group_similarity, level_weights, shape_code, share,
                         standardise_histograms)
from .types import FRAGMENT_RECORD_DTYPE

logger = logging.getLogger(__name__)


def stack_samples(ids: np.ndarray, samples: dict[int, tuple[np.ndarray, np.ndarray]], cap: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most ``cap`` evenly spaced samples per fragment -> (z (T, bins), codes (T, 7), offsets (F+1,))."""
    hists, hus, counts = [], [], []
    for fragment_id in ids.tolist():
        hist, hu = samples[fragment_id]
        hist, hu = np.asarray(hist), np.asarray(hu)
        check_samples(f"fragment {fragment_id}", hist, hu)
        k = hist.shape[0]
        if k > cap:
            pick = np.unique(np.linspace(0, k - 1, cap).round().astype(np.intp))
            hist, hu = hist[pick], hu[pick]
        hists.append(hist.astype(np.float32))
        hus.append(hu)
        counts.append(hist.shape[0])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)
    return standardise_histograms(np.concatenate(hists)), shape_code(np.concatenate(hus)), offsets


def similarity_matrix(z: np.ndarray, code: np.ndarray, offsets: np.ndarray, cfg: IdentityConfig) -> np.ndarray:
    """Symmetric Sim between all fragments, float32 (F, F), computed in blocks of rows."""
    table = level_weights(cfg)
    n_frag, total = offsets.size - 1, offsets[-1]
    sim = np.zeros((n_frag, n_frag), np.float32)
    first = 0
    while first < n_frag:
        # only the upper triangle of blocks: Sim is symmetric
        row0, width = offsets[first], total - offsets[first]
        rows_fit = max(1, MAX_PAIRS_PER_BLOCK // max(width, 1))
        last = max(first + 1, int(np.searchsorted(offsets, row0 + rows_fit, side="right")) - 1)
        last = min(last, n_frag)
        block = group_similarity(z[row0:offsets[last]], code[row0:offsets[last]], offsets[first:last + 1] - row0,
                                 z[row0:], code[row0:], offsets[first:] - row0, cfg, table)
        sim[first:last, first:] = block
        sim[first:, first:last] = block.T
        first = last
    return sim


def _row_correlation(matrix: np.ndarray) -> np.ndarray:
    """Pearson correlation between all rows of a (F, F) matrix, float32; constant rows correlate 0."""
    z = standardise_histograms(matrix)  # same centring and scaling, along rows
    return z @ z.T


class _Fusion:
    """Identity models over fragments: each identity's affinity to a fragment is the sample-weighted
    mean IdMatrix row of the fragments it holds, and it is blocked from fragments coexisting with them."""

    def __init__(self, id_matrix: np.ndarray, coexist: np.ndarray, weight: np.ndarray, n_identities: int,
                 min_correlation: float):
        n_frag = id_matrix.shape[0]
        self.id_matrix, self.coexist, self.weight = id_matrix, coexist, weight
        self.min_correlation = min_correlation
        self.identity = np.zeros(n_frag, np.int32)
        self.sum = np.zeros((n_identities, n_frag))
        self.total = np.zeros(n_identities)
        self.blocked = np.zeros((n_identities, n_frag), bool)

    def assign(self, f: int, identity: int) -> None:
        i = identity - 1
        self.identity[f] = identity
        self.sum[i] += self.weight[f] * self.id_matrix[f]
        self.total[i] += self.weight[f]
        self.blocked[i] |= self.coexist[f]

    def scores(self, row: int | None = None) -> np.ndarray:
        """Affinity (identities, F), or (F,) for one identity. An identity without fragments scores
        ``min_correlation`` (it may be opened); blocked pairs score -inf."""
        pick = slice(None) if row is None else slice(row, row + 1)
        total = self.total[pick, None]
        out = np.full(self.sum[pick].shape, self.min_correlation)
        np.divide(self.sum[pick], total, out=out, where=total > 0)
        out[self.blocked[pick]] = -np.inf
        return out if row is None else out[0]

    def assign_group(self, group: np.ndarray) -> None:
        """Hungarian between a group's unassigned fragments and the identities its others leave free."""
        todo = group[self.identity[group] == 0]
        free = np.setdiff1d(np.arange(1, self.total.size + 1), self.identity[group])
        if todo.size == 0 or free.size == 0:
            return
        score = self.scores()[free - 1][:, todo]
        rows, cols = linear_sum_assignment(np.where(np.isfinite(score), score, -1e9), maximize=True)
        for r, c in zip(rows, cols):
            if np.isfinite(score[r, c]):
                self.assign(int(todo[c]), int(free[r]))

    def assign_greedy(self, candidates: np.ndarray) -> None:
        """Best affinity first, down to ``min_correlation``, refreshing the winner's row each time."""
        open_ = candidates & (self.identity == 0)
        score = self.scores()
        score[:, ~open_] = -np.inf
        n_frag = open_.size
        while True:
            best = int(np.argmax(score))
            i, f = divmod(best, n_frag)
            if not (np.isfinite(score[i, f]) and score[i, f] >= self.min_correlation):
                return
            self.assign(f, i + 1)
            open_[f] = False
            score[:, f] = -np.inf
            row = self.scores(i)
            row[~open_] = -np.inf
            score[i] = row

    def assign_rest(self) -> None:
        """Every fragment still unassigned that some identity can take, best affinity first, however
        low: a position with a doubtful identity (and a low probability) beats no position."""
        threshold, self.min_correlation = self.min_correlation, -np.inf
        try:
            self.assign_greedy(np.ones(self.identity.size, bool))
        finally:
            self.min_correlation = threshold

    def probability(self) -> np.ndarray:
        """Share of the chosen identity in the positive affinities, each fragment left out of its own
        identity's model, float64 (F,); 0 for unassigned fragments."""
        assigned = np.flatnonzero(self.identity > 0)
        own = self.identity[assigned] - 1
        sums = self.sum[:, assigned].copy()
        totals = np.repeat(self.total[:, None], assigned.size, axis=1)
        sums[own, np.arange(assigned.size)] -= self.weight[assigned] * self.id_matrix[assigned, assigned]
        totals[own, np.arange(assigned.size)] -= self.weight[assigned]
        affinity = np.zeros_like(sums)
        np.divide(sums, totals, out=affinity, where=totals > 1e-12)
        positive = np.maximum(affinity, 0.0)
        out = np.zeros(self.identity.size)
        out[assigned] = share(positive[own, np.arange(assigned.size)], positive.sum(axis=0))
        return out


def _match_live_labels(fused: np.ndarray, live: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
    """Relabel fused identities (1..n) to agree as much as possible with the live ones (sample-weighted)."""
    ok = (fused > 0) & (live > 0) & (live <= n)
    overlap = np.zeros((n, n))
    np.add.at(overlap, (fused[ok] - 1, live[ok] - 1), weight[ok])
    if not overlap.any():
        return fused
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    relabel = np.zeros(n + 1, np.int32)
    relabel[rows + 1] = cols + 1
    return relabel[fused]


def fuse_fragments(fragments: np.ndarray, samples: dict[int, tuple[np.ndarray, np.ndarray]],
                   number_of_animals: int, cfg: IdentityConfig) -> dict[int, tuple[int, float]]:
    """End-of-session ToxId fusion: fragment id -> (identity 1..N, probability in [0, 1]).

    fragments: rows of ``FRAGMENT_RECORD_DTYPE``; samples: fragment id -> (histograms (k, bins),
    hu (k, 7)). Crossing fragments and fragments without samples are ignored; at most
    ``fusion_samples`` evenly spaced samples of each fragment are compared.

    1. Sim between all fragments; P = Pearson correlation of their Sim rows; IdMatrix = P, with 1
       on the diagonal and 0 for coexisting fragments (overlapping [start, end]).
    2. Long fragments (``n_samples >= long_fragment_samples``) alive N at a time form complete
       groups. The group whose shortest fragment is longest seeds identities 1..N (without any,
       the best complete group of fragments of any length does, and without that the largest
       set of long fragments alive together); the other groups, best first, are assigned by
       Hungarian on the identities' affinities (mean IdMatrix row of the fragments each identity
       holds).
    3. The remaining long, then all remaining fragments, greedily from the highest affinity down
       to ``min_correlation``, each assignment updating its identity's affinities. An identity never
       takes a fragment coexisting with one it holds; identities left without fragments are
       opened in turn by fragments that match no open identity above ``min_correlation``.
       Last, fragments still unassigned take the best identity free for them, however weak (their
       probability says so): a doubtful identity is more use than a missing position.
    4. Identities are relabelled to agree best with the live identities of the records.

    Probability: the fragment's (left-out) affinity to its identity over the sum of its positive
    affinities to all identities. Fragments left unassigned are absent from the result. With
    ``number_of_animals == 0`` nothing is fused and the result is empty.
    """
    if fragments.dtype != FRAGMENT_RECORD_DTYPE:
        fragments = np.asarray(fragments).astype(FRAGMENT_RECORD_DTYPE)
    n = int(number_of_animals)
    if n <= 0:
        return {}
    usable = ~fragments["is_crossing"] & np.array([int(f) in samples and len(samples[int(f)][0]) > 0
                                                   for f in fragments["fragment"]], bool)
    rows = fragments[usable]
    rows = rows[np.lexsort((rows["fragment"], rows["start"]))]
    if rows.size == 0:
        return {}
    ids, start, end = rows["fragment"], rows["start"], rows["end"]
    z, code, offsets = stack_samples(ids, samples, cfg.fusion_samples)
    compared = np.diff(offsets)
    length = np.where(rows["n_samples"] > 0, rows["n_samples"], compared)

    sim = similarity_matrix(z, code, offsets, cfg)
    id_matrix = _row_correlation(sim).astype(np.float64)
    coexist = overlapping(start[:, None], end[:, None], start[None, :], end[None, :])
    np.fill_diagonal(coexist, False)
    id_matrix[coexist] = 0.0
    np.fill_diagonal(id_matrix, 1.0)

    fusion = _Fusion(id_matrix, coexist, compared.astype(np.float64), n, cfg.min_correlation)
    long = length >= cfg.long_fragment_samples
    groups = complete_groups(start, end, np.flatnonzero(long), n)
    order = np.argsort([int(length[g].min()) for g in groups], kind="stable")[::-1]
    if groups:
        seed = groups[order[0]]
    else:
        # Without a complete group of long fragments, seed from the complete group of any length
        # whose shortest fragment is longest; without any (animals that leave the view), from the
        # largest set of long fragments alive together: its identities are certain to differ.
        complete = complete_groups(start, end, np.arange(ids.size), n)
        seed = (max(complete, key=lambda g: int(length[g].min())) if complete
                else largest_alive_group(start, end, length, np.flatnonzero(long)))
    for identity, f in enumerate(seed, start=1):
        fusion.assign(int(f), identity)
    for g in order[1:]:
        fusion.assign_group(groups[g])
    fusion.assign_greedy(long)
    fusion.assign_greedy(np.ones(long.size, bool))
    fusion.assign_rest()
    logger.info("fusion: %d of %d fragments assigned, %d complete groups",
                int((fusion.identity > 0).sum()), ids.size, len(groups))

    identity = _match_live_labels(fusion.identity, rows["identity"], length.astype(np.float64), n)
    probability = fusion.probability()
    return {int(f): (int(i), float(p)) for f, i, p in zip(ids, identity, probability) if i > 0}
