"""Gated linear assignment between tracks and blobs (SORT's contract as a pure function)."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

_FORBIDDEN = 1e12


def assign(cost: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost one-to-one matching of rows (tracks) to columns (blobs) among allowed pairs.

    cost    float (M, n); allowed bool (M, n).
    Returns (matches (k, 2) int [row, col], unmatched rows, unmatched columns).
    """
    m, n = cost.shape
    if m == 0 or n == 0 or not allowed.any():
        return np.zeros((0, 2), np.intp), np.arange(m), np.arange(n)
    rows, cols = linear_sum_assignment(np.where(allowed, cost, _FORBIDDEN))
    keep = allowed[rows, cols]
    rows, cols = rows[keep], cols[keep]
    row_free = np.ones(m, bool)
    row_free[rows] = False
    col_free = np.ones(n, bool)
    col_free[cols] = False
    return np.stack([rows, cols], axis=1), np.flatnonzero(row_free), np.flatnonzero(col_free)
