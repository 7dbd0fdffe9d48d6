"""ToxId similarity between sets of appearance samples.

After Rodríguez, Zhang, Klaminder, Andersson & Brodin (2018), "ToxId: an efficient algorithm to
solve occlusions when tracking multiple animals", Sci. Rep. 8:14774, section "Fragment similarity".

Similarity of two sample sets a (k samples) and b (m samples), each sample an intensity histogram
and seven Hu moments::

    R_ij   = Pearson(H_a,i , H_b,j)                       all k x m pairs, one matrix product
    A      = max_ij R_ij                                  similarity amplitude
    r_L    = |{R_ij : L/Ln <= R_ij < (L+1)/Ln}| / (k m)   rate of correlations in level L
    w_L    = Gauss((L + 1/2) / Ln | mu, sigma)            unnormalised, so w_L <= 1
    Sim    = max(A, 0) * sum_L w_L r_L                    in [0, 1]

Pairs whose shape differs too much (``ShapeDiff > max_shape_difference``, when that key is
positive) take no part in A nor in any r_L, but still count in ``k m``. ShapeDiff is the paper's
``sum_h |1/Hu_a^h - 1/Hu_b^h|`` taken, as OpenCV's ``matchShapes`` (CONTOURS_MATCH_I1) does, on
``m = sign(Hu) log10|Hu|``: on raw Hu moments the smallest invariants (~1e-10) would swamp the sum.
"""
from __future__ import annotations

import numba
import numpy as np
from scipy.spatial.distance import cdist

from .config import IdentityConfig

HU_COUNT = 7
MAX_PAIRS_PER_BLOCK = 1 << 22  # ~16 MB of float32 per temporary in the fusion's Sim matrix


def standardise_histograms(histogram: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (float32 (n, bins)), so that a dot product is Pearson's r.

    A flat histogram has no variance; its row stays 0 and correlates 0 with everything.
    """
    z = np.asarray(histogram, np.float32).reshape(len(histogram), -1).copy()
    z -= z.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    np.divide(z, norm, out=z, where=norm > 0)
    return z


def shape_code(hu: np.ndarray) -> np.ndarray:
    """``1 / (sign(h) log10|h|)`` per Hu moment (float64 (n, 7)); ShapeDiff is the L1 distance of codes.

    Moments that are exactly 0 get code 0 (OpenCV skips them); ``|log10|h||`` is kept above 0.01 so
    that a moment near 1 does not blow the code up.
    """
    h = np.asarray(hu, np.float64).reshape(-1, HU_COUNT)
    code = np.zeros_like(h)
    nonzero = np.abs(h) > 1e-300
    m = np.log10(np.abs(h, where=nonzero, out=np.ones_like(h)))
    m = np.copysign(np.maximum(np.abs(m), 0.01), m) * np.sign(h)
    np.divide(1.0, m, out=code, where=nonzero)
    return code


def level_weights(cfg: IdentityConfig) -> np.ndarray:
    """Gaussian weight of each correlation level, prefixed with 0 for negative correlations."""
    levels = cfg.correlation_levels
    mids = (np.arange(levels) + 0.5) / levels
    weights = np.exp(-0.5 * ((mids - cfg.gauss_mu) / cfg.gauss_sigma) ** 2)
    return np.concatenate([[0.0], weights]).astype(np.float32)


def _pair_weights(corr: np.ndarray, table: np.ndarray) -> np.ndarray:
    """w_L of the level each correlation falls in (0 below 0; r = 1 belongs to the top level)."""
    levels = table.shape[0] - 1
    index = np.floor(corr * levels)
    np.clip(index, -1, levels - 1, out=index)
    index += 1
    return table[index.astype(np.int32)]


@numba.njit(cache=True, nogil=True)
def _reduce_pairs(corr, code_a, code_b, offsets_a, offsets_b, table, max_shape):  # pragma: no cover - compiled
    """Per group pair: sum of level weights and max correlation over the pairs passing the shape
    filter; one pass over the (Ta, Tb) correlations with no temporaries."""
    n_a, n_b = offsets_a.size - 1, offsets_b.size - 1
    levels = table.size - 1
    weight_sum = np.zeros((n_a, n_b))
    amplitude = np.full((n_a, n_b), -np.inf)
    for ga in range(n_a):
        for i in range(offsets_a[ga], offsets_a[ga + 1]):
            for gb in range(n_b):
                acc = 0.0
                best = amplitude[ga, gb]
                for j in range(offsets_b[gb], offsets_b[gb + 1]):
                    if max_shape > 0:
                        diff = 0.0
                        for h in range(code_a.shape[1]):
                            diff += abs(code_a[i, h] - code_b[j, h])
                        if diff > max_shape:
                            continue
                    r = corr[i, j]
                    if r > best:
                        best = r
                    if r >= 0:
                        level = int(r * levels)
                        acc += table[min(level, levels - 1) + 1]
                weight_sum[ga, gb] += acc
                amplitude[ga, gb] = best
    return weight_sum, amplitude


@numba.njit(cache=True, nogil=True, fastmath=True)
def _row_products(za, zb):  # pragma: no cover - compiled
    """za @ zb.T in one thread: the live loop's products are too small to pay for BLAS threads."""
    out = np.empty((za.shape[0], zb.shape[0]), np.float32)
    for i in range(za.shape[0]):
        for j in range(zb.shape[0]):
            acc = np.float32(0.0)
            for k in range(za.shape[1]):
                acc += za[i, k] * zb[j, k]
            out[i, j] = acc
    return out


def group_similarity(za: np.ndarray, ca: np.ndarray, offsets_a: np.ndarray,
                     zb: np.ndarray, cb: np.ndarray, offsets_b: np.ndarray,
                     cfg: IdentityConfig, table: np.ndarray, small: bool = False) -> np.ndarray:
    """Same as :func:`_similarity_flat`, with the pair reduction compiled (the hot loop of both the
    live decisions and the fusion). ``small`` computes the correlations without BLAS."""
    corr = _row_products(za, zb) if small else za @ zb.T
    weight_sum, amplitude = _reduce_pairs(corr, ca, cb, offsets_a.astype(np.int64), offsets_b.astype(np.int64),
                                          table.astype(np.float64), float(cfg.max_shape_difference))
    pairs = np.outer(np.diff(offsets_a), np.diff(offsets_b))
    return np.maximum(amplitude, 0.0) * weight_sum / pairs


def _similarity_flat(za: np.ndarray, ca: np.ndarray, offsets_a: np.ndarray,
                     zb: np.ndarray, cb: np.ndarray, offsets_b: np.ndarray,
                     cfg: IdentityConfig, table: np.ndarray) -> np.ndarray:
    """ToxId Sim between every group of a and every group of b -> float64 (groups_a, groups_b).

    za (Ta, bins) and zb (Tb, bins) are standardised histograms, ca/cb their shape codes; group g
    of a is rows ``offsets_a[g]:offsets_a[g+1]``. Every group must hold at least one sample.
    """
    corr = za @ zb.T
    weight = _pair_weights(corr, table)
    if cfg.max_shape_difference > 0:
        far = cdist(ca, cb, "cityblock") > cfg.max_shape_difference
        weight[far] = 0.0
        corr[far] = -np.inf
    starts_a, starts_b = offsets_a[:-1], offsets_b[:-1]
    weight_sum = np.add.reduceat(np.add.reduceat(weight, starts_b, axis=1, dtype=np.float64), starts_a, axis=0)
    amplitude = np.maximum.reduceat(np.maximum.reduceat(corr, starts_b, axis=1), starts_a, axis=0)
    pairs = np.outer(np.diff(offsets_a), np.diff(offsets_b))
    return np.maximum(amplitude, 0.0) * weight_sum / pairs


def check_samples(name: str, hist: np.ndarray, hu: np.ndarray) -> None:
    if hist.ndim != 2 or hu.shape != (hist.shape[0], HU_COUNT):
        raise ValueError(f"{name}: expected histograms (k, bins) and hu (k, 7), got {hist.shape} and {hu.shape}")


def fragment_similarity(hist_a: np.ndarray, hu_a: np.ndarray, hist_b: np.ndarray, hu_b: np.ndarray,
                        cfg: IdentityConfig) -> float:
    """ToxId ``Sim`` (in [0, 1]) between two sample sets: histograms (k, bins) + Hu (k, 7) and (m, bins) + (m, 7).

    Returns 0 when either side is empty or no pair passes the shape filter.
    """
    hist_a, hist_b = np.asarray(hist_a), np.asarray(hist_b)
    hu_a, hu_b = np.asarray(hu_a), np.asarray(hu_b)
    check_samples("a", hist_a, hu_a)
    check_samples("b", hist_b, hu_b)
    if hist_a.shape[1] != hist_b.shape[1]:
        raise ValueError(f"histogram bins differ: {hist_a.shape[1]} vs {hist_b.shape[1]}")
    k, m = hist_a.shape[0], hist_b.shape[0]
    if k == 0 or m == 0:
        return 0.0
    sim = _similarity_flat(standardise_histograms(hist_a), shape_code(hu_a), np.array([0, k]),
                           standardise_histograms(hist_b), shape_code(hu_b), np.array([0, m]),
                           cfg, level_weights(cfg))
    return float(sim[0, 0])


def share(chosen: np.ndarray, total: np.ndarray) -> np.ndarray:
    """chosen / total, 0 where total is 0: the identity probability used throughout."""
    out = np.zeros(np.shape(chosen), np.float64)
    np.divide(chosen, total, out=out, where=total > 0)
    return np.clip(out, 0.0, 1.0)
