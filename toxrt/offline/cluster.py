"""K-means in the embedding space, image identity probabilities and the silhouette score.

Torrents et al. 2025, Appendix 2 "Clustering and assignment": mini-batch K-means (Sculley 2010)
with K = number of animals, initialised from a global fragment when one exists; the probability of
image I belonging to identity j is

    P(I, j) = d_j(I)^-7 / sum_k d_k(I)^-7

with d_j the distance to cluster centre j. Clustering quality is the mean silhouette
(Rousseeuw 1987), used to stop training (0.91 ~ < 1 % image error).
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import MiniBatchKMeans
from sklearn.metrics import silhouette_score

PROBABILITY_POWER = 7


def group_centers(embeddings: np.ndarray, group: np.ndarray, k: int) -> np.ndarray | None:
    """float64 (k, d): mean embedding of each group 1..k (group 0 ignored); None if one is empty."""
    d = embeddings.shape[1]
    sums = np.zeros((k + 1, d))
    np.add.at(sums, group, embeddings)
    counts = np.bincount(group, minlength=k + 1)[:k + 1]
    if (counts[1:] == 0).any():
        return None
    return sums[1:] / counts[1:, None]


def kmeans(embeddings: np.ndarray, k: int, init: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mini-batch K-means -> (centers float64 (k, d), labels int64 (n,) in 0..k-1).

    ``init`` (k, d) starts the centres there (a global fragment or the live identities), which
    also keeps cluster j tied to the same animal across training evaluations.
    """
    x = np.asarray(embeddings, np.float64)
    if init is not None and init.shape[0] != k:
        raise ValueError(f"init has {init.shape[0]} centres, expected {k}")
    model = MiniBatchKMeans(n_clusters=k, init=init if init is not None else "k-means++", n_init=1,
                            batch_size=min(4096, max(256, x.shape[0])), random_state=seed,
                            max_iter=100, max_no_improvement=10)
    labels = model.fit_predict(x)
    return model.cluster_centers_, labels.astype(np.int64)


def identity_probabilities(embeddings: np.ndarray, centers: np.ndarray,
                           power: float = PROBABILITY_POWER) -> np.ndarray:
    """float64 (n, k): inverse ``power``-th power of the distance to each centre, normalised.

    Computed in log space (softmax of -power * log d) so an image on a centre gives probability 1
    instead of a division by zero.
    """
    d2 = ((embeddings[:, None, :].astype(np.float64) - centers[None]) ** 2).sum(axis=2)
    logits = -0.5 * power * np.log(np.maximum(d2, 1e-24))
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def silhouette(embeddings: np.ndarray, labels: np.ndarray, max_samples: int, seed: int) -> float:
    """Mean silhouette of the clustering; -1 when it is undefined (fewer than 2 clusters used)."""
    n_used = np.unique(labels).shape[0]
    if n_used < 2 or n_used >= embeddings.shape[0]:
        return -1.0
    sample = max_samples if 0 < max_samples < embeddings.shape[0] else None
    return float(silhouette_score(embeddings, labels, sample_size=sample, random_state=seed))
