"""The batched Kalman model against filterpy's per-track KalmanFilter, and the gated assignment."""
import numpy as np
from filterpy.common import Q_discrete_white_noise
from filterpy.kalman import KalmanFilter

from toxrt.matching import assign
from toxrt.kalman import TRANSITION, ConstantVelocityModel, process_noise


def reference_filter(x0, p0, q, r):
    kf = KalmanFilter(dim_x=4, dim_z=2)
    kf.F = TRANSITION.copy()
    kf.H = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    kf.Q = Q_discrete_white_noise(dim=2, dt=1.0, var=q, block_size=2, order_by_dim=False)
    kf.R = r * np.eye(2)
    kf.x, kf.P = x0.copy(), p0.copy()
    return kf


def test_process_noise_matches_filterpy():
    np.testing.assert_allclose(process_noise(0.7), Q_discrete_white_noise(2, 1.0, 0.7, block_size=2, order_by_dim=False))


def test_batched_model_matches_filterpy_track_by_track():
    rng = np.random.default_rng(42)
    n_tracks, q, r = 12, 0.5, 2.0
    model = ConstantVelocityModel(q, r)
    start = rng.uniform(0, 500, (n_tracks, 2))
    velocity = rng.normal(0, 3, (n_tracks, 2))
    mean, cov = model.initiate(start)
    references = [reference_filter(mean[i], cov[i], q, r) for i in range(n_tracks)]
    for t in range(1, 40):
        model.predict(mean, cov)
        seen = rng.random(n_tracks) > 0.2  # some tracks miss a measurement and only predict
        z = start + velocity * t + rng.normal(0, 1.0, (n_tracks, 2))
        rows = np.flatnonzero(seen)
        sub_mean, sub_cov = mean[rows], cov[rows]
        model.update(sub_mean, sub_cov, z[rows])
        mean[rows], cov[rows] = sub_mean, sub_cov
        for i, kf in enumerate(references):
            kf.predict()
            if seen[i]:
                kf.update(z[i])
        np.testing.assert_allclose(mean, np.array([kf.x.ravel() for kf in references]), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(cov, np.array([kf.P for kf in references]), rtol=1e-9, atol=1e-9)
    assert np.abs(mean[:, 2:] - velocity).mean() < 0.5  # and it learns the velocities


def test_assignment_respects_the_gate():
    cost = np.array([[1.0, 2.0, 9.0], [1.5, 8.0, 9.0]])
    allowed = np.array([[True, True, False], [True, False, False]])
    matches, free_rows, free_cols = assign(cost, allowed)
    assert sorted(map(tuple, matches)) == [(0, 1), (1, 0)]
    assert free_rows.size == 0 and free_cols.tolist() == [2]


def test_assignment_with_nothing_allowed_or_empty():
    matches, free_rows, free_cols = assign(np.ones((2, 2)), np.zeros((2, 2), bool))
    assert matches.shape == (0, 2) and free_rows.tolist() == [0, 1] and free_cols.tolist() == [0, 1]
    matches, free_rows, free_cols = assign(np.zeros((0, 3)), np.zeros((0, 3), bool))
    assert matches.shape == (0, 2) and free_cols.tolist() == [0, 1, 2]
