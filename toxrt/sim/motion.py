"""How the simulated animals move: correlated random walks that keep off the walls and meet.

Turning rate is a persistent (AR(1)) random process, speed varies around each animal's own mean,
walls repel softly (and mirror a step that would cross them), and a mild pull towards the nearest
neighbour makes animals meet about as often as in a shoal or a small arena.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


def simulate_motion(rng: np.random.Generator, n_frames: int, width: int, height: int,
                    margin: np.ndarray, speed_px: float, body_length_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Correlated random walks whose centres keep ``margin`` (float (N,), px) from the edges.

    speed_px: mean speed in pixels per frame. Returns positions float64 (F, N, 2) (x, y) and
    headings float64 (F, N) in radians.
    """
    n = margin.shape[0]
    lo = np.ascontiguousarray(np.stack([margin, margin], axis=1), dtype=np.float64)
    hi = np.ascontiguousarray(np.stack([width - 1 - margin, height - 1 - margin], axis=1), dtype=np.float64)
    start = rng.uniform(lo, hi)
    heading = rng.uniform(-math.pi, math.pi, n)
    mean_speed = speed_px * rng.uniform(0.7, 1.3, n)
    turn_noise = rng.standard_normal((n_frames, n)) * 0.1
    speed_noise = rng.standard_normal((n_frames, n)) * (0.25 * speed_px)
    positions = np.empty((n_frames, n, 2))
    headings = np.empty((n_frames, n))
    _walk(start, heading, mean_speed, lo, hi, turn_noise, speed_noise, float(speed_px),
          float(body_length_px), positions, headings)
    return positions, headings


@njit(cache=True)
def _wrap_angle(angle: float) -> float:
    """An angle wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


@njit(cache=True)
def _walk(start, heading0, mean_speed, lo, hi, turn_noise, speed_noise, speed_px, body_length,
          positions, headings):  # pragma: no cover - compiled
    """The random-walk recurrence of :func:`simulate_motion`, writing positions and headings."""
    n_frames, n = turn_noise.shape
    pos = start.copy()
    heading = heading0.copy()
    speed = mean_speed.copy()
    turn = np.zeros(n)
    steer = np.zeros(n)
    lookahead = 1.5 * body_length
    for t in range(n_frames):
        positions[t] = pos
        headings[t] = heading
        for i in range(n):
            hx, hy = math.cos(heading[i]), math.sin(heading[i])
            # Soft walls: turn away from a wall the look-ahead point has crossed, harder the deeper.
            ax, ay = pos[i, 0] + hx * lookahead, pos[i, 1] + hy * lookahead
            px = (max(lo[i, 0] - ax, 0.0) - max(ax - hi[i, 0], 0.0)) / lookahead
            py = (max(lo[i, 1] - ay, 0.0) - max(ay - hi[i, 1], 0.0)) / lookahead
            strength = min(math.hypot(px, py), 1.0)
            steer[i] = 0.35 * strength * _wrap_angle(math.atan2(py, px) - heading[i]) if strength > 0 else 0.0
            # Mild attraction to the nearest neighbour when it is far, so animals meet about
            # as often as in a shoal or a small arena, not as rarely as independent walkers.
            best, bx, by = math.inf, 0.0, 0.0
            for j in range(n):
                if j != i:
                    dx, dy = pos[j, 0] - pos[i, 0], pos[j, 1] - pos[i, 1]
                    d = math.hypot(dx, dy)
                    if d < best:
                        best, bx, by = d, dx, dy
            if best < math.inf and best > 2.0 * body_length:
                steer[i] += 0.04 * _wrap_angle(math.atan2(by, bx) - heading[i])
        for i in range(n):
            # Turning rate is an AR(1) process: heading persistence over ~4 frames.
            turn[i] = 0.75 * turn[i] + turn_noise[t, i]
            heading[i] = _wrap_angle(heading[i] + turn[i] + steer[i])
            speed[i] = min(max(speed[i] + 0.1 * (mean_speed[i] - speed[i]) + speed_noise[t, i], 0.0), 3.0 * speed_px)
            pos[i, 0] += speed[i] * math.cos(heading[i])
            pos[i, 1] += speed[i] * math.sin(heading[i])
            # Hard walls: mirror a step that leaves the allowed box, and the heading with it.
            if pos[i, 0] < lo[i, 0] or pos[i, 0] > hi[i, 0]:
                edge = lo[i, 0] if pos[i, 0] < lo[i, 0] else hi[i, 0]
                pos[i, 0] = min(max(2.0 * edge - pos[i, 0], lo[i, 0]), hi[i, 0])
                heading[i] = _wrap_angle(math.pi - heading[i])
            if pos[i, 1] < lo[i, 1] or pos[i, 1] > hi[i, 1]:
                edge = lo[i, 1] if pos[i, 1] < lo[i, 1] else hi[i, 1]
                pos[i, 1] = min(max(2.0 * edge - pos[i, 1], lo[i, 1]), hi[i, 1])
                heading[i] = _wrap_angle(-heading[i])
