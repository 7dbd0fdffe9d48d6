"""From image identity probabilities to one identity per fragment, never shared by coexisting ones.

Follows the order of Torrents et al. 2025 (Appendix 2, steps 4-7, and the residual identification
of Appendix 1):

1. fragment probability P1(F, i): the mean of its images' probabilities;
2. global fragments (N coexisting fragments), longest-shortest first: accepted whole when their
   fragments' best identities are all different and free (uniqueness and consistency checks);
3. residual identification for every other fragment, most certain first: P2(F, i) is P1 with the
   identities of already identified coexisting fragments removed, renormalised; the certainty is
   (P2 best - P2 second) * sqrt(n_images) (a difference of means gains evidence as sqrt(n)); a
   fragment whose every identity is taken stays unidentified (0).

Identities are 1..N; 0 means none.
"""
from __future__ import annotations

import heapq

import numpy as np
from scipy.optimize import linear_sum_assignment


def fragment_probabilities(image_probabilities: np.ndarray, n_images: np.ndarray) -> np.ndarray:
    """float64 (F, N): mean image probability per fragment; images are grouped by fragment in order."""
    offsets = np.zeros(n_images.shape[0], np.int64)
    np.cumsum(n_images[:-1], out=offsets[1:])
    sums = np.add.reduceat(image_probabilities, offsets, axis=0) if len(offsets) else \
        np.zeros((0, image_probabilities.shape[1]))
    return sums / np.maximum(n_images, 1)[:, None]


def fragment_probabilities_chunked(embeddings: np.ndarray, centers: np.ndarray, n_images: np.ndarray,
                                   column_order: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Like ``fragment_probabilities`` of ``cluster.identity_probabilities``, without ever holding
    the (images, N) probabilities of a whole session: images are taken ``chunk`` at a time.

    embeddings (R, d) grouped by fragment; centers (N, d); column_order (N,) reorders the columns
    (cluster -> identity). Returns float64 (F, N).
    """
    from .cluster import identity_probabilities

    owner = np.repeat(np.arange(n_images.shape[0]), n_images)
    sums = np.zeros((n_images.shape[0], centers.shape[0]))
    for lo in range(0, embeddings.shape[0], chunk):
        p = identity_probabilities(embeddings[lo:lo + chunk], centers)[:, column_order]
        f = owner[lo:lo + chunk]
        starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])  # images of a fragment are contiguous
        sums[f[starts]] += np.add.reduceat(p, starts, axis=0)
    return sums / np.maximum(n_images, 1)[:, None]


def align_clusters(cluster: np.ndarray, live: np.ndarray, k: int) -> np.ndarray:
    """int64 (k,): identity 1..k for each cluster, maximising the images whose live identity agrees.

    cluster int (n,) 0..k-1; live int (n,) 0..k (0 = no live identity, ignored). Keeps the refined
    identities in the live numbering so that changes can be counted and clients see stable ids.
    """
    overlap = np.zeros((k, k + 1), np.int64)
    np.add.at(overlap, (cluster, np.clip(live, 0, k)), 1)
    rows, cols = linear_sum_assignment(-overlap[:, 1:])
    mapping = np.zeros(k, np.int64)
    mapping[rows] = cols + 1
    return mapping


class Assigner:
    """Identity bookkeeping: what each fragment has and which identities its neighbours hold."""

    def __init__(self, p1: np.ndarray, ptr: np.ndarray, adj: np.ndarray) -> None:
        self.p1 = p1
        self.ptr, self.adj = ptr, adj
        self.identity = np.zeros(p1.shape[0], np.int64)
        self.probability = np.zeros(p1.shape[0])
        # taken[f, i]: a coexisting fragment of f already has identity i + 1
        self.taken = np.zeros(p1.shape, bool)

    def neighbours(self, f: int) -> np.ndarray:
        return self.adj[self.ptr[f]:self.ptr[f + 1]]

    def p2(self, f: int) -> np.ndarray:
        p = np.where(self.taken[f], 0.0, self.p1[f])
        total = p.sum()
        return p / total if total > 0 else p

    def give(self, f: int, identity: int, probability: float) -> None:
        self.identity[f] = identity
        self.probability[f] = probability
        self.taken[self.neighbours(f), identity - 1] = True


def assign_fragments(p1: np.ndarray, n_images: np.ndarray, ptr: np.ndarray, adj: np.ndarray,
                     global_sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(identity int64 (F,) 0..N, probability float64 (F,)) for every fragment.

    p1 (F, N) fragment probabilities; n_images (F,); coexistence as CSR (ptr, adj), see
    ``FragmentTable.neighbours``; global_sets int (G, N) table indices, best first.
    """
    state = Assigner(p1, ptr, adj)
    for members in global_sets:
        accept_global_fragment(state, members)
    _residual(state, n_images)
    return state.identity, state.probability


def accept_global_fragment(state: Assigner, members: np.ndarray) -> None:
    """Give a global fragment's free fragments their identities if they are unique and consistent."""
    todo = members[state.identity[members] == 0]
    if todo.size == 0:
        return
    p2 = np.stack([state.p2(f) for f in todo])
    best = p2.argmax(axis=1)
    if (p2[np.arange(todo.size), best] <= 0).any() or np.unique(best).size != best.size:
        return  # uniqueness fails: left to residual identification
    # the Hungarian optimum must agree with each fragment's own best identity (consistency)
    rows, cols = linear_sum_assignment(-np.log(np.maximum(p2, 1e-300)))
    if not np.array_equal(cols[np.argsort(rows)], best):
        return
    for f, i, p in zip(todo, best, p2[np.arange(todo.size), best]):
        state.give(int(f), int(i) + 1, float(p))


def _certainty(p2: np.ndarray, n: int) -> float:
    top2 = np.partition(p2, -2)[-2:] if p2.shape[0] > 1 else np.array([0.0, p2[0]])
    return float((top2[1] - top2[0]) * np.sqrt(n))


def _residual(state: Assigner, n_images: np.ndarray) -> None:
    """Most certain unidentified fragment first; neighbours re-rank lazily when an identity is taken."""
    heap: list[tuple[float, int, int]] = []
    version = np.zeros(state.p1.shape[0], np.int64)
    for f in np.flatnonzero(state.identity == 0):
        heapq.heappush(heap, (-_certainty(state.p2(int(f)), int(n_images[f])), 0, int(f)))
    while heap:
        _, v, f = heapq.heappop(heap)
        if state.identity[f] != 0 or v != version[f]:
            continue  # already identified, or a stale entry
        p2 = state.p2(f)
        if p2.max() <= 0:
            continue  # every identity is held by a coexisting fragment
        best = int(p2.argmax())
        state.give(f, best + 1, float(p2[best]))
        for g in state.neighbours(f):
            if state.identity[g] == 0:
                version[g] += 1
                heapq.heappush(heap, (-_certainty(state.p2(int(g)), int(n_images[g])), int(version[g]), int(g)))


def shares_identity_with_coexisting(identity: np.ndarray, pairs: np.ndarray) -> int:
    """Number of coexisting pairs whose two fragments hold the same non-zero identity."""
    if len(pairs) == 0:
        return 0
    a, b = identity[pairs[:, 0]], identity[pairs[:, 1]]
    return int(((a == b) & (a > 0)).sum())
