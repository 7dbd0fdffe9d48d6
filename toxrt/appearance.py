"""An identity model learned from the session's own identification images (no torch).

The identification images (``features.py``) are crops of one animal, rotated so that its main
axis is horizontal, everything outside the blob set to 0. Two things in them are arbitrary and
would make a linear model learn posture instead of identity:

* **Bending.** A swimming fish or a turning fly bends its body, so its pixels do not stay on the
  crop's middle row. :func:`identity_features` *straightens* the body: in every column it finds the
  intensity-weighted centre row of the animal and shifts the column so that the centre lies on the
  middle row, then keeps a band of ``band_fraction`` of the crop side around it.
* **Head or tail first.** The main axis has no direction. The straightened band is turned by 180°
  when the third moment of its column masses is positive, so that the heavier end (the head of a
  fish, the thorax of a fly, the head and body of a mouse with its tail) always lies on the same
  side. Training on 180°-turned copies as well, as one would without this rule, cost 9 points of
  image accuracy on zebrafish14: a linear model then learns the average of both ends.

The features keep the grey levels as seen: on ``zebrafish14_fasttrack`` normalising each image by
its mean intensity lost 6 points of cross-validated image accuracy (docs/identity.md).

:class:`AppearanceModel` is a linear discriminant analysis with Ledoit-Wolf shrinkage (the
covariance of a few hundred pixels is estimated from a few thousand images at most). It is fitted
into a :class:`ModelSnapshot`, plain arrays, so that the live stage scores images with one matrix
product and a background thread can replace the model at any time.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numba
import numpy as np

# Widest straightened band, in columns: larger crops are resampled (area) to this width. On
# zebrafish14 (52 px crops) 48 columns kept the cross-validated image accuracy within 1 point of
# the native width, 32 lost 2.4 points; the cost of the model grows with the square of the width.
MAX_FEATURE_WIDTH = 48
# Log-probabilities are floored here: one image that the model finds impossible for an identity
# (numerically -inf) must not veto that identity for a whole fragment.
LOG_PROBABILITY_FLOOR = -30.0
# The smallest probability of an identity that was given to a fragment (0 would say "impossible").
MIN_PROBABILITY = 1e-6


@dataclass(frozen=True)
class FeatureShape:
    """How identification images of side ``crop_size`` become feature vectors."""

    crop_size: int
    band_fraction: float  # height of the kept band / crop side

    @property
    def half_height(self) -> int:
        return max(1, int(round(self.band_fraction * self.crop_size / 2.0)))

    @property
    def width(self) -> int:
        return min(self.crop_size, MAX_FEATURE_WIDTH)

    @property
    def size(self) -> int:
        return (2 * self.half_height + 1) * self.width


@functools.lru_cache(maxsize=16)
def _area_matrix(source: int, target: int) -> np.ndarray:
    """float32 (source, target): column j averages the source cells that overlap target cell j."""
    edges = np.linspace(0.0, source, target + 1)
    lo, hi = edges[:-1], edges[1:]
    cells = np.arange(source)
    overlap = np.clip(np.minimum(cells[:, None] + 1, hi[None]) - np.maximum(cells[:, None], lo[None]), 0, None)
    return (overlap / overlap.sum(axis=0, keepdims=True)).astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _straighten(crops, half, out):  # pragma: no cover - compiled
    """out[i] (2 half + 1, s): crops[i] with each column shifted so that the body centre row (the
    intensity-weighted mean row, pooled over 3 columns) lands on the middle row; linear
    interpolation between rows; then turned by 180° when the column masses are skewed right."""
    k, s = crops.shape[0], crops.shape[1]
    height = 2 * half + 1
    mass = np.empty(s)
    moment = np.empty(s)
    band = np.empty((height, s), np.float32)
    for i in range(k):
        for x in range(s):
            m = 0.0
            mo = 0.0
            for r in range(s):
                v = float(crops[i, r, x])
                m += v
                mo += v * r
            mass[x] = m
            moment[x] = mo
        skew = 0.0
        for x in range(s):
            pm = mass[x]
            po = moment[x]
            if x > 0:
                pm += mass[x - 1]
                po += moment[x - 1]
            if x < s - 1:
                pm += mass[x + 1]
                po += moment[x + 1]
            centre = po / pm if pm > 0 else (s - 1) / 2.0
            base = int(np.floor(centre))
            w = centre - base
            column = 0.0
            for j in range(height):
                r0 = base + j - half
                v = 0.0
                if 0 <= r0 < s:
                    v += (1.0 - w) * crops[i, r0, x]
                if 0 <= r0 + 1 < s:
                    v += w * crops[i, r0 + 1, x]
                band[j, x] = v
                column += v
            dx = x - (s - 1) / 2.0
            skew += column * dx * dx * dx
        turn = skew > 0  # heavier end first
        for j in range(height):
            for x in range(s):
                out[i, j, x] = band[height - 1 - j, s - 1 - x] if turn else band[j, x]


def identity_features(crops: np.ndarray, shape: FeatureShape) -> np.ndarray:
    """float32 (k, shape.size): straightened, head-tail canonical bands of uint8 crops (k, s, s)."""
    crops = np.ascontiguousarray(crops, dtype=np.uint8)
    k, s = crops.shape[0], shape.crop_size
    if crops.ndim != 3 or crops.shape[1:] != (s, s):
        raise ValueError(f"identity_features: crops of shape {crops.shape}, expected (k, {s}, {s})")
    if k == 0:
        return np.zeros((0, shape.size), np.float32)
    band = np.empty((k, 2 * shape.half_height + 1, s), np.float32)
    _straighten(crops, shape.half_height, band)
    if shape.width != s:
        band = band @ _area_matrix(s, shape.width)
    return band.reshape(k, -1)


@dataclass(frozen=True)
class ModelSnapshot:
    """A fitted linear model as plain arrays: log p(identity | x) = softmax(x @ coef.T + intercept).

    identities int64 (C,): the identities (1..N) the model knows; coef float32 (C, d); intercept
    float32 (C,); number_of_animals N. ``temperature`` divides summed image log-probabilities when a
    fragment's probability is formed from several images (``accumulation.fit_temperature``).
    """

    identities: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    number_of_animals: int
    temperature: float = 1.0
    # fragment id -> identity, for the recent fragments a live learner accepted (``live_appearance``)
    accepted: dict = field(default_factory=dict)

    def log_proba(self, features: np.ndarray) -> np.ndarray:
        """float32 (k, N): log-probability of each identity 1..N; unknown identities get the floor."""
        out = np.full((features.shape[0], self.number_of_animals), LOG_PROBABILITY_FLOOR, np.float32)
        if features.shape[0] == 0:
            return out
        scores = features @ self.coef.T + self.intercept
        scores -= scores.max(axis=1, keepdims=True)
        scores -= np.log(np.exp(scores).sum(axis=1, keepdims=True))
        out[:, self.identities - 1] = np.maximum(scores, LOG_PROBABILITY_FLOOR)
        return out


class AppearanceModel:
    """Linear discriminant analysis on identity features; identities are labels 1..N.

    The class covariance is pooled over identities and shrunk towards a multiple of the identity
    with the Ledoit-Wolf weight (``sklearn.covariance.ledoit_wolf_shrinkage``), then solved by
    Cholesky. scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``
    (one standardised shrinkage per class, an SVD-based solve) took 5.6 s per fit on zebrafish14
    (4,800 images of 816 values), this 0.3 s, and the accumulation fits the model a dozen times;
    cross-validated over time, fragments were identified as well or better (68% against 67%,
    docs/identity.md). Identities are equally likely a priori: every
    animal is in every frame, however many of its images were accepted so far.
    """

    def __init__(self, shape: FeatureShape, number_of_animals: int):
        self.shape = shape
        self.number_of_animals = int(number_of_animals)

    def fit(self, features: np.ndarray, labels: np.ndarray) -> ModelSnapshot:
        """Fit on images (k, d) with labels (k,) in 1..N."""
        from scipy.linalg import cho_factor, cho_solve
        from sklearn.covariance import ledoit_wolf_shrinkage

        labels = np.asarray(labels, np.int64)
        identities, index = np.unique(labels, return_inverse=True)
        if identities.size < 2:
            raise ValueError("an appearance model needs images of at least 2 identities")
        # float32 for the (images, d) arrays and matrix products (they release the GIL: a live
        # learner thread must not stall the frame loop), float64 for the (d, d) solve.
        x = np.asarray(features, np.float32)
        counts = np.bincount(index, minlength=identities.size)
        onehot = np.zeros((x.shape[0], identities.size), np.float32)
        onehot[np.arange(x.shape[0]), index] = 1.0
        means = (onehot.T @ x) / counts[:, None].astype(np.float32)
        centred = x - means[index]
        shrinkage = ledoit_wolf_shrinkage(centred, assume_centered=True)
        cov = (centred.T @ centred).astype(np.float64) / x.shape[0]
        means = means.astype(np.float64)
        mu = np.trace(cov) / cov.shape[0]
        cov *= 1.0 - shrinkage  # Ledoit-Wolf: (1 - a) S + a mu I
        cov[np.diag_indices_from(cov)] += shrinkage * mu + 1e-9 * max(mu, 1.0)  # never singular
        coef = cho_solve(cho_factor(cov), means.T).T
        intercept = -0.5 * np.einsum("cd,cd->c", means, coef)
        return ModelSnapshot(identities=identities, coef=coef.astype(np.float32),
                             intercept=intercept.astype(np.float32), number_of_animals=self.number_of_animals)
