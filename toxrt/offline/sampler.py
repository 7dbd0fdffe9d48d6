"""Positive and negative image pairs, sampled hierarchically as in idtracker.ai v6.

Torrents et al. 2025, Appendix 2 "Pairs selection":

* a positive pair is two different images of one fragment; a negative pair is one image from
  each of two coexisting fragments; fragments with fewer than 4 images are left out;
* first a fragment (positives) or a pair of coexisting fragments (negatives) is drawn, then
  images inside them;
* by size: P_s(F_i) = f_i / sum f, and P_s(F_i, F_j) = f_ij / sum f with f_ij = f_i + f_j;
* by loss: each fragment pair has a loss score ls, incremented by one each time one of its image
  pairs is sampled with a non-zero loss, and decayed by 2 % every batch:
  ls <- 0.98 * ls + #(sampled pairs with L > 0); P_ls = ls / sum ls;
* mixed: P = alpha * P_s + (1 - alpha) * P_ls (alpha = 0 alone fails: forgetting).

Batches are balanced: as many positive as negative pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..fragments import FragmentTable
from .dataset import MIN_TRAINING_IMAGES


@dataclass(frozen=True)
class PairBatch:
    """One batch of pairs; image entries are blob row indices.

    positive_fragment int64 (n,) table index of each positive pair's fragment
    positive_a/b      int64 (n,) blob rows of the two images (different images of that fragment)
    negative_pair     int64 (m,) index into the sampler's negative fragment pairs
    negative_a/b      int64 (m,) blob rows: one image of each of the two coexisting fragments
    """

    positive_fragment: np.ndarray
    positive_a: np.ndarray
    positive_b: np.ndarray
    negative_pair: np.ndarray
    negative_a: np.ndarray
    negative_b: np.ndarray


class PairSampler:
    """Draws balanced batches of pairs and keeps the loss scores.

    table              the session's individual fragments
    images_per_fragment at most this many images of each fragment are sampled from (evenly spaced
                       along the fragment; 0 = all): consecutive frames are near-duplicates
    alpha              weight of size-based sampling against loss-based sampling
    decay              loss scores are multiplied by this every batch (0.98 = 2 % decay)
    """

    def __init__(self, table: FragmentTable, rng: np.random.Generator, images_per_fragment: int = 0,
                 alpha: float = 0.5, decay: float = 0.98, min_images: int = MIN_TRAINING_IMAGES) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.rng = rng
        self.alpha = float(alpha)
        self.decay = float(decay)
        self.fragments = np.flatnonzero(table.n_images >= min_images)
        keep = np.zeros(len(table), bool)
        keep[self.fragments] = True
        pairs = table.pairs
        self.pairs = pairs[keep[pairs[:, 0]] & keep[pairs[:, 1]]] if len(pairs) else pairs
        self._pool_offsets, self._pool_rows = _image_pool(table, self.fragments, images_per_fragment)
        # sizes for the size-based probabilities use every image of the fragment (paper)
        size = table.n_images.astype(np.float64)
        self._p_size_pos = _normalised(size[self.fragments])
        self._p_size_neg = _normalised(size[self.pairs[:, 0]] + size[self.pairs[:, 1]]) \
            if len(self.pairs) else np.zeros(0)
        # where each fragment sits in self.fragments (for positive draws)
        self._slot = np.full(len(table), -1, np.int64)
        self._slot[self.fragments] = np.arange(self.fragments.shape[0])
        self.score_pos = np.zeros(self.fragments.shape[0])
        self.score_neg = np.zeros(self.pairs.shape[0])

    @property
    def can_train(self) -> bool:
        """There is at least one positive fragment and one negative fragment pair."""
        return self.fragments.size > 0 and self.pairs.shape[0] > 0

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """(P over fragments for positives, P over fragment pairs for negatives)."""
        return (_mix(self._p_size_pos, self.score_pos, self.alpha),
                _mix(self._p_size_neg, self.score_neg, self.alpha))

    def sample(self, n_pairs: int) -> PairBatch:
        """n_pairs positive and n_pairs negative pairs."""
        p_pos, p_neg = self.probabilities()
        slots = _draw(self.rng, p_pos, n_pairs)
        frag = self.fragments[slots]
        pos_a, pos_b = self._two_distinct_images(slots)
        neg = _draw(self.rng, p_neg, n_pairs)
        a_frag, b_frag = self.pairs[neg, 0], self.pairs[neg, 1]
        neg_a = self._one_image(self._slot[a_frag])
        neg_b = self._one_image(self._slot[b_frag])
        return PairBatch(frag, pos_a, pos_b, neg, neg_a, neg_b)

    def update(self, batch: PairBatch, positive_loss: np.ndarray, negative_loss: np.ndarray) -> None:
        """Decay every score by 2 % and add one per sampled pair whose loss was above zero."""
        self.score_pos *= self.decay
        self.score_neg *= self.decay
        np.add.at(self.score_pos, self._slot[batch.positive_fragment], (positive_loss > 0).astype(np.float64))
        np.add.at(self.score_neg, batch.negative_pair, (negative_loss > 0).astype(np.float64))

    def state_dict(self) -> dict[str, Any]:
        return {"score_pos": self.score_pos.copy(), "score_neg": self.score_neg.copy(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["score_pos"].shape != self.score_pos.shape or state["score_neg"].shape != self.score_neg.shape:
            raise ValueError("sampler state does not match this session's fragments")
        self.score_pos = np.asarray(state["score_pos"], np.float64).copy()
        self.score_neg = np.asarray(state["score_neg"], np.float64).copy()
        self.rng.bit_generator.state = state["rng"]

    def _pool_size(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = self._pool_offsets[slots]
        return lo, self._pool_offsets[slots + 1] - lo

    def _one_image(self, slots: np.ndarray) -> np.ndarray:
        lo, n = self._pool_size(slots)
        pick = (self.rng.random(slots.shape[0]) * n).astype(np.int64)
        return self._pool_rows[lo + np.minimum(pick, n - 1)]

    def _two_distinct_images(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, n = self._pool_size(slots)
        u = self.rng.random((2, slots.shape[0]))
        a = np.minimum((u[0] * n).astype(np.int64), n - 1)
        # b is uniform over the n - 1 other images
        b = (a + 1 + np.minimum((u[1] * (n - 1)).astype(np.int64), n - 2)) % n
        return self._pool_rows[lo + a], self._pool_rows[lo + b]


def _image_pool(table: FragmentTable, fragments: np.ndarray, per_fragment: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR over ``fragments``: up to ``per_fragment`` evenly spaced rows of each (0 = all)."""
    counts = table.n_images[fragments]
    take = counts if per_fragment <= 0 else np.minimum(counts, per_fragment)
    offsets = np.zeros(fragments.shape[0] + 1, np.int64)
    np.cumsum(take, out=offsets[1:])
    # k-th of m kept images of a fragment with n images sits at floor(k * n / m)
    owner = np.repeat(np.arange(fragments.shape[0]), take)
    k = np.arange(offsets[-1]) - offsets[:-1][owner]
    local = (k * counts[owner]) // take[owner]
    rows = table.rows[table.offsets[fragments][owner] + local]
    return offsets, rows


def _normalised(weights: np.ndarray) -> np.ndarray:
    total = weights.sum()
    return weights / total if total > 0 else np.full(weights.shape, 1.0 / max(len(weights), 1))


def _mix(p_size: np.ndarray, score: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * P_s + (1 - alpha) * P_ls; while no pair has a score, P_ls falls back to P_s."""
    total = score.sum()
    p_loss = score / total if total > 0 else p_size
    return alpha * p_size + (1.0 - alpha) * p_loss


def _draw(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    """n indices drawn with replacement from the distribution p (inverse CDF)."""
    cdf = np.cumsum(p)
    idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return np.minimum(idx, p.shape[0] - 1)
