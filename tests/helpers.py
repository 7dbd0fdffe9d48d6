"""Small builders shared by tests."""
from __future__ import annotations

import numpy as np

from toxrt.types import Blobs


def make_blobs(xy, area, oversized=None, bins: int = 8, crop: int = 8) -> Blobs:
    """Blobs with the given centroids (n, 2), areas (n,) and oversized flags (n,) (default none);
    other features are placeholders."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    n = xy.shape[0]
    area = np.broadcast_to(np.asarray(area, float), (n,)).copy()
    oversized = np.zeros(n, bool) if oversized is None else np.asarray(oversized, bool)
    return Blobs(
        centroid=xy,
        area=area,
        orientation=np.zeros(n),
        bbox=np.zeros((n, 4), np.int32),
        hu=np.ones((n, 7)),
        histogram=np.full((n, bins), 1.0 / bins, np.float32),
        crop=np.zeros((n, crop, crop), np.uint8),
        oversized=oversized,
    )
