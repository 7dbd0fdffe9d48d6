"""How the simulated animals look and how they are drawn: bodies, patterns, light, crossings.

Each animal is an elongated, head-heavy body (an ellipse whose half-width grows from tail to
head) with its own size, darkness and internal pattern (:class:`Appearance`). Bodies are drawn
by compiled (numba) kernels into small boxes: :func:`raster_all` (masks and contrasts),
:func:`composite` (onto a noisy, unevenly lit ground) and :func:`crossings_of` (which animals
touch); every one of them draws through ``_raster``, so images and crossing flags agree to the pixel.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from numba import njit

# Body outline: half-width along the body is half_width * (1 + TAPER * u / half_length), u from
# the outline's centre towards the head; the centre of mass then lies TAPER / 4 half-lengths
# ahead of the outline's centre.
TAPER = 0.3
HALF_WIDTH_RATIO = 0.17  # half-width at the centre / body length; total width ~0.35 length


@dataclass(frozen=True)
class Appearance:
    """Per-animal body geometry and pattern, all float64 arrays of shape (N,).

    half_length, half_width: pixels; contrast: grey levels darker (or brighter, light-on-dark)
    than the ground before the pattern; head_gain, stripe_amplitude, midline_gain: relative
    changes of the contrast; stripe_frequency: stripes per half-length; stripe_phase: radians.
    """

    half_length: np.ndarray
    half_width: np.ndarray
    contrast: np.ndarray
    head_gain: np.ndarray
    stripe_amplitude: np.ndarray
    stripe_frequency: np.ndarray
    stripe_phase: np.ndarray
    midline_gain: np.ndarray

    @property
    def centre_shift(self) -> np.ndarray:
        """Distance (px) from the outline's centre forward to the body's centre of mass."""
        return self.half_length * (TAPER / 4.0)

    @property
    def extent(self) -> np.ndarray:
        """Largest distance (px) from the centre of mass to a body point (the tail tip)."""
        return self.half_length + self.centre_shift

    def table(self) -> np.ndarray:
        """float64 (N, 9) for the kernels: the fields in order, then the centre shift."""
        return np.ascontiguousarray(np.stack(
            [getattr(self, f.name) for f in dataclasses.fields(self)] + [self.centre_shift], axis=1))


def draw_appearance(rng: np.random.Generator, n: int, body_length_px: float, spread: float) -> Appearance:
    """Random animals; ``spread`` in [0, 1] scales every difference between them.

    All draws happen whatever the spread, so a seed gives the same random sequence.
    """
    size = 1.0 + spread * rng.uniform(-0.2, 0.2, n)
    length = body_length_px * size
    return Appearance(
        half_length=length / 2.0,
        half_width=HALF_WIDTH_RATIO * length,
        contrast=120.0 + spread * rng.uniform(-35.0, 35.0, n),
        head_gain=0.15 + spread * rng.uniform(-0.15, 0.2, n),
        stripe_amplitude=spread * rng.uniform(0.0, 0.35, n),
        stripe_frequency=rng.uniform(1.5, 3.5, n),
        stripe_phase=rng.uniform(0.0, 2.0 * math.pi, n),
        midline_gain=spread * rng.uniform(-0.25, 0.25, n),
    )


def illumination(rng: np.random.Generator, width: int, height: int, uneven: float) -> np.ndarray:
    """Gain float32 (height, width) in [1 - uneven, 1]: a vignette plus a linear gradient."""
    if uneven <= 0:
        return np.ones((height, width), np.float32)
    x = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / (width / 2)
    y = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / (height / 2)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    vignette = x[None, :] ** 2 + y[:, None] ** 2
    gradient = math.cos(angle) * x[None, :] + math.sin(angle) * y[:, None]
    field = 0.6 * vignette + 0.4 * gradient
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    return (1.0 - uneven * field).astype(np.float32)


# --------------------------------------------------------------------- body rasterisation
# Columns of Appearance.table().
_A, _B, _CONTRAST, _HEAD, _STRIPE_AMP, _STRIPE_FREQ, _STRIPE_PHASE, _MIDLINE, _SHIFT = range(9)


@njit(cache=True)
def _interval(base: float, slope: float, lo: float, hi: float) -> tuple[float, float]:
    """The t with lo <= base + slope * t <= hi, as (start, stop); empty when start > stop."""
    if abs(slope) < 1e-12:
        return (-math.inf, math.inf) if lo <= base <= hi else (1.0, 0.0)
    t0, t1 = (lo - base) / slope, (hi - base) / slope
    return (t0, t1) if t0 <= t1 else (t1, t0)


@njit(cache=True)
def _raster(cx, cy, co, si, look, ox, oy, inside, dark, limit):  # pragma: no cover - compiled
    """Draw one body on a grid whose pixel (row r, column c) is image pixel (ox + c, oy + r).

    A pixel is a body pixel when its centre is inside the outline. Sets ``inside`` (bool, 2-D)
    there and, when ``dark`` is not empty, its contrast (float32, 2-D, same shape). Every
    caller draws bodies through here, so images and crossing flags agree to the pixel.
    """
    rows, cols = inside.shape
    a, b, shift = look[_A], look[_B], look[_SHIFT]
    widest = b * (1.0 + TAPER)
    want_dark = dark.shape[0] > 0
    base_x = ox - cx
    for r in range(rows):
        dy = (oy + r) - cy
        # Columns whose pixel may be inside the body's bounding box in the body frame:
        # -a <= u <= a and |v| <= widest, each linear in dx; one column of slack each side.
        u0, u1 = _interval(dy * si + shift, co, -a, a)
        v0, v1 = _interval(dy * co, -si, -widest, widest)
        lo_dx, hi_dx = max(u0, v0), min(u1, v1)
        if lo_dx > hi_dx:
            continue
        c_start = max(int(math.floor(lo_dx - base_x)) - 1, 0)
        c_stop = min(int(math.ceil(hi_dx - base_x)) + 2, cols)
        for c in range(c_start, c_stop):
            dx = (ox + c) - cx
            u = dx * co + dy * si + shift  # forward from the outline's centre
            v = dy * co - dx * si  # to the animal's right
            un = u / a
            along = 1.0 - un * un
            if along < 0.0:
                continue
            w = b * (1.0 + TAPER * un)
            if v * v > w * w * along:
                continue
            inside[r, c] = True
            if want_dark:
                head = min(max((un - 0.2) * 2.5, 0.0), 1.0)
                pattern = 1.0 + look[_HEAD] * head
                stripe = 0.5 * (1.0 + math.cos(2.0 * math.pi * look[_STRIPE_FREQ] * un + look[_STRIPE_PHASE]))
                pattern *= 1.0 - look[_STRIPE_AMP] * stripe
                midline = min(max(1.0 - v * v / (0.36 * w * w), 0.0), 1.0)
                pattern *= 1.0 + look[_MIDLINE] * midline
                dark[r, c] = min(max(look[_CONTRAST] * pattern, 0.0), limit)


@njit(cache=True)
def raster_all(cx, cy, cos, sin, look, ox, oy, inside, dark, limit):  # pragma: no cover - compiled
    """:func:`_raster` for M bodies on (M, K, K) grids; ``dark`` may be empty (masks only)."""
    want_dark = dark.shape[0] > 0
    no_dark = np.zeros((0, 0), np.float32)
    for m in range(cx.shape[0]):
        _raster(cx[m], cy[m], cos[m], sin[m], look[m], ox[m], oy[m], inside[m],
                dark[m] if want_dark else no_dark, limit)


@njit(cache=True)
def composite(image, dark, ox, oy, level, sign, gain, noise, scratch):  # pragma: no cover - compiled
    """Paint M blurred contrast boxes (float32 (M, K, K)) onto ``image`` (uint8, noisy ground).

    Where bodies overlap the stronger contrast shows (one animal above the other). Pixels
    without contrast keep the precomputed noisy ground. ``scratch`` is a float32 (H, W) buffer
    of zeros, returned to zeros.
    """
    height, width = image.shape
    count, k = dark.shape[0], dark.shape[1]
    for m in range(count):
        for r in range(k):
            y = oy[m] + r
            if 0 <= y < height:
                for c in range(k):
                    x = ox[m] + c
                    if 0 <= x < width and dark[m, r, c] > scratch[y, x]:
                        scratch[y, x] = dark[m, r, c]
    half = np.float32(0.5)
    for m in range(count):
        for r in range(k):
            y = oy[m] + r
            if 0 <= y < height:
                for c in range(k):
                    x = ox[m] + c
                    if 0 <= x < width and scratch[y, x] > 0:
                        value = (level + sign * scratch[y, x]) * gain[y, x] + np.float32(noise[y, x]) + half
                        image[y, x] = np.uint8(min(max(value, np.float32(0.0)), np.float32(255.0)))
                        scratch[y, x] = 0


@njit(cache=True)
def crossings_of(positions, cos, sin, look, reach, radius, distance, out):  # pragma: no cover - compiled
    """Set out[f, i] (bool (F, N)) when animal i's body pixels lie within ``distance`` pixels
    (Chebyshev) of another animal's in frame f. reach: float (N,) the body extents plus slack."""
    n_frames, n = out.shape
    k = 2 * radius + 1
    size = k + 2 * distance
    mask_a = np.zeros((k, k), np.bool_)
    mask_b = np.zeros((size, size), np.bool_)
    no_dark = np.zeros((0, 0), np.float32)
    for f in range(n_frames):
        for i in range(n):
            for j in range(i + 1, n):
                if out[f, i] and out[f, j]:
                    continue
                xi, yi, xj, yj = positions[f, i, 0], positions[f, i, 1], positions[f, j, 0], positions[f, j, 1]
                if math.hypot(xi - xj, yi - yj) > reach[i] + reach[j]:
                    continue
                ox, oy = int(math.floor(xi)) - radius, int(math.floor(yi)) - radius
                mask_a[:] = False
                mask_b[:] = False
                _raster(xi, yi, cos[f, i], sin[f, i], look[i], ox, oy, mask_a, no_dark, 0.0)
                _raster(xj, yj, cos[f, j], sin[f, j], look[j], ox - distance, oy - distance, mask_b, no_dark, 0.0)
                touch = False
                for r in range(k):
                    for c in range(k):
                        if mask_a[r, c]:
                            # mask_b's row r + distance is mask_a's row r.
                            for dr in range(2 * distance + 1):
                                for dc in range(2 * distance + 1):
                                    if mask_b[r + dr, c + dc]:
                                        touch = True
                                        break
                                if touch:
                                    break
                        if touch:
                            break
                    if touch:
                        break
                if touch:
                    out[f, i] = True
                    out[f, j] = True
