"""Batched constant-velocity Kalman model for all tracks at once.

State per track is ``[x, y, vx, vy]`` (pixels, pixels per frame); only ``[x, y]`` is measured.
The model holds no track state: callers pass (M, 4) means and (M, 4, 4) covariances, as in
ByteTrack's shared Kalman model. The noise model matches filterpy's
``Q_discrete_white_noise(dim=2, dt=1, var=q, block_size=2, order_by_dim=False)`` and ``R = r * I``,
so that ``filterpy.kalman.KalmanFilter`` with the same F, H, Q, R is a per-track reference.
"""
from __future__ import annotations

import numpy as np

# x' = F x
TRANSITION = np.array([[1.0, 0, 1, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]])


def process_noise(q: float) -> np.ndarray:
    """Discrete white-noise acceleration (dt = 1) for x and y: Q = q * [[1/4, 1/2], [1/2, 1]] per axis."""
    block = q * np.array([[0.25, 0.5], [0.5, 1.0]])
    noise = np.zeros((4, 4))
    noise[np.ix_([0, 2], [0, 2])] = block
    noise[np.ix_([1, 3], [1, 3])] = block
    return noise


class ConstantVelocityModel:
    """Predict and update many tracks with one set of array operations."""

    def __init__(self, process_noise_q: float, measurement_noise_r: float, initial_velocity_var: float = 100.0):
        self.Q = process_noise(process_noise_q)
        self.r = measurement_noise_r
        self.initial_velocity_var = initial_velocity_var

    def initiate(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks at measured positions (k, 2), at rest with an uncertain velocity."""
        k = xy.shape[0]
        mean = np.zeros((k, 4))
        mean[:, :2] = xy
        cov = np.zeros((k, 4, 4))
        cov[:, 0, 0] = cov[:, 1, 1] = self.r
        cov[:, 2, 2] = cov[:, 3, 3] = self.initial_velocity_var
        return mean, cov

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> None:
        """In place: x = F x, P = F P F' + Q."""
        mean[:, :2] += mean[:, 2:]
        # F P F' for F = [[I, I], [0, I]] in 2x2 blocks, written out to avoid two batched matmuls.
        p_xx, p_xv, p_vx, p_vv = cov[:, :2, :2], cov[:, :2, 2:], cov[:, 2:, :2], cov[:, 2:, 2:]
        p_xx += p_xv + p_vx + p_vv
        p_xv += p_vv
        p_vx += p_vv
        cov += self.Q

    def update(self, mean: np.ndarray, cov: np.ndarray, xy: np.ndarray) -> None:
        """In place for the given rows: the standard update with H = [I 0], R = r I.

        S = H P H' + R;  K = P H' S^-1;  x += K (z - H x);  P = (I - K H) P
        """
        s = cov[:, :2, :2] + self.r * np.eye(2)
        # Closed-form inverse of the 2x2 innovation covariances.
        det = s[:, 0, 0] * s[:, 1, 1] - s[:, 0, 1] * s[:, 1, 0]
        s_inv = np.empty_like(s)
        s_inv[:, 0, 0] = s[:, 1, 1] / det
        s_inv[:, 1, 1] = s[:, 0, 0] / det
        s_inv[:, 0, 1] = -s[:, 0, 1] / det
        s_inv[:, 1, 0] = -s[:, 1, 0] / det
        gain = cov[:, :, :2] @ s_inv  # (k, 4, 2)
        innovation = xy - mean[:, :2]
        mean += np.einsum("kij,kj->ki", gain, innovation)
        cov -= gain @ cov[:, :2, :]
