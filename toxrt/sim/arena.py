"""A simulated arena: N animals seen from above, with exact ground truth.

Each animal is an elongated, head-heavy body (an ellipse whose half-width grows from tail to
head) with its own size, darkness and internal pattern (a darker head, transverse stripes, a
lighter or darker midline), so that the intensity histograms of the animals differ; how much
they differ is ``SimConfig.appearance_spread`` (0 = identical animals). The animals move by
correlated random walks (persistent turning rate, varying speed), steer softly away from the
walls, drift mildly towards their nearest neighbour and pass over each other, so touches and
crossings happen regularly.

Ground truth, precomputed at construction (the crossing flags on first use):

``positions`` float64 (F, N, 2)
    x, y in pixels of the body's centre of mass (pixel centres sit at integer coordinates, so
    this is the mean column and row of the animal's pixels, up to rasterisation);
``headings`` float64 (F, N)
    radians, direction from tail to head in image coordinates (x right, y down);
``crossing`` bool (F, N)
    a body pixel of the animal lies within ``touch_distance_px`` (Chebyshev distance) of a body
    pixel of another animal, so that a segmentation would merge the two: 1 (touching,
    8-connected, or overlapping) without blur, 2 with blur_sigma up to 1.5 (the blur bridges
    a one-pixel gap), and so on.

A body pixel is a pixel whose centre lies inside the body outline (``body_masks``); with no
blur and no noise these are exactly the pixels that differ from the background. Images are
rendered lazily, one per frame: each animal is drawn into its own small box by compiled
(numba) kernels, so a frame costs a copy of a precomputed noisy background plus work
proportional to the animals' area (about 1 ms for 20 animals of 40 px at 1920x1080).

Quick start::

    arena = SimulatedArena(SimConfig(width=320, height=240), number_of_animals=4)
    for index, image in arena.frames():
        ...  # image: uint8 (240, 320); truth: arena.positions[index], arena.crossing[index]
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from numba import njit

from ..config import SimConfig, config_to_dict, to_toml
from ..errors import ConfigError, ToxrtError

logger = logging.getLogger(__name__)

# Grey level of the empty arena before illumination, for dark animals on a light ground and
# for the inverted (light-on-dark) scene.
GROUND_LEVEL_LIGHT = 200.0
GROUND_LEVEL_DARK = 45.0
# Body outline: half-width along the body is half_width * (1 + TAPER * u / half_length), u from
# the outline's centre towards the head; the centre of mass then lies TAPER / 4 half-lengths
# ahead of the outline's centre.
TAPER = 0.3
HALF_WIDTH_RATIO = 0.17  # half-width at the centre / body length; total width ~0.35 length
# The noisy background is a bank of a few precomputed frames, chosen at random per frame,
# because drawing a full frame of Gaussian noise costs ~10 ms at 1080p.
NOISE_BANK_FRAMES = 8
NOISE_BANK_MAX_BYTES = 64 * 2**20
VIDEO_CODECS = ("FFV1", "MJPG")  # lossless first; MJPG as a fallback for builds without FFV1


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
def _raster_all(cx, cy, cos, sin, look, ox, oy, inside, dark, limit):  # pragma: no cover - compiled
    """:func:`_raster` for M bodies on (M, K, K) grids; ``dark`` may be empty (masks only)."""
    want_dark = dark.shape[0] > 0
    no_dark = np.zeros((0, 0), np.float32)
    for m in range(cx.shape[0]):
        _raster(cx[m], cy[m], cos[m], sin[m], look[m], ox[m], oy[m], inside[m],
                dark[m] if want_dark else no_dark, limit)


@njit(cache=True)
def _composite(image, dark, ox, oy, level, sign, gain, noise, scratch):  # pragma: no cover - compiled
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
def _crossings(positions, cos, sin, look, reach, radius, distance, out):  # pragma: no cover - compiled
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


class SimulatedArena:
    """N animals in a ``width`` x ``height`` arena over ``n_frames`` frames, with ground truth.

    See the module docstring for the ground-truth arrays. Frames are deterministic for a seed.
    """

    def __init__(self, cfg: SimConfig, number_of_animals: int):
        if number_of_animals < 1:
            raise ConfigError(f"number_of_animals: {number_of_animals!r} must be at least 1 for a simulated arena")
        self.cfg = cfg
        self.width = int(cfg.width)
        self.height = int(cfg.height)
        self.fps = float(cfg.fps)
        self.n_frames = int(cfg.frames)
        self.body_length_px = float(cfg.body_length_px)
        self.number_of_animals = int(number_of_animals)
        self.light_on_dark = bool(cfg.light_on_dark)
        self.ground_level = GROUND_LEVEL_DARK if self.light_on_dark else GROUND_LEVEL_LIGHT

        seeds = np.random.SeedSequence(cfg.seed).spawn(4)
        rng_look, rng_motion, rng_light, rng_noise = (np.random.default_rng(s) for s in seeds)
        self.appearance = draw_appearance(rng_look, self.number_of_animals, self.body_length_px, cfg.appearance_spread)
        self._look = self.appearance.table()
        margin = np.ceil(self.appearance.extent) + 1.0
        # Leave each animal at least one body length to move in, across the narrower side.
        if np.any(2 * margin + self.body_length_px > min(self.width, self.height)):
            raise ConfigError(f"sim.body_length_px: {cfg.body_length_px!r} is too large for a "
                              f"{self.width}x{self.height} arena")
        self.positions, self.headings = simulate_motion(
            rng_motion, self.n_frames, self.width, self.height, margin,
            cfg.speed_body_lengths * self.body_length_px, self.body_length_px)
        self._cos = np.cos(self.headings)
        self._sin = np.sin(self.headings)

        # Every animal is drawn into a (K, K) box around its centre: body plus blur tail.
        self._blur_radius = int(math.ceil(3.0 * cfg.blur_sigma)) if cfg.blur_sigma > 0 else 0
        self._body_radius = int(math.ceil(self.appearance.extent.max())) + 1
        self._radius = self._body_radius + self._blur_radius + 1
        # Blur darkens a one-pixel gap between two bodies enough for a threshold to bridge it.
        self.touch_distance_px = 1 + (int(math.ceil(cfg.blur_sigma - 0.5)) if cfg.blur_sigma > 0 else 0)
        # Keeps the scene inside 0..255 before light and noise.
        self._limit = self.ground_level - 8.0 if not self.light_on_dark else 250.0 - self.ground_level
        self._gain = illumination(rng_light, self.width, self.height, cfg.uneven_light)
        self._clean = (np.float32(self.ground_level) * self._gain).astype(np.float32)
        self._make_noise_bank(rng_noise, cfg.noise_sigma)
        self._noise_choice = rng_noise.integers(0, self._noise.shape[0], self.n_frames)
        self._scratch = np.zeros((self.height, self.width), np.float32)  # reused every frame
        logger.debug("simulated arena %dx%d, %d animals, %d frames", self.width, self.height,
                     self.number_of_animals, self.n_frames)

    # ------------------------------------------------------------------ ground truth
    @functools.cached_property
    def crossing(self) -> np.ndarray:
        """bool (F, N): the animal's body is within ``touch_distance_px`` of another's."""
        out = np.zeros((self.n_frames, self.number_of_animals), bool)
        if self.number_of_animals > 1:
            # Bodies farther apart than the sum of their extents (plus slack) cannot touch.
            reach = self.appearance.extent + 1.0 + self.touch_distance_px / 2.0
            _crossings(self.positions, self._cos, self._sin, self._look, reach, self._body_radius,
                       self.touch_distance_px, out)
        return out

    def body_masks(self, positions: np.ndarray, headings: np.ndarray,
                   animals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The body pixels of M animals: bool (M, K, K) masks and int64 (M, 2) grid origins x, y.

        Row r, column c of mask m is image pixel (origin[m, 0] + c, origin[m, 1] + r).
        """
        cx, cy, cos, sin, ids = self._prepare(positions, headings, animals)
        k = 2 * self._body_radius + 1
        ox = np.floor(cx).astype(np.int64) - self._body_radius
        oy = np.floor(cy).astype(np.int64) - self._body_radius
        inside = np.zeros((cx.shape[0], k, k), bool)
        _raster_all(cx, cy, cos, sin, self._look[ids], ox, oy, inside, np.zeros((0, 0, 0), np.float32), 0.0)
        return inside, np.stack([ox, oy], axis=1)

    def body_area_px(self) -> np.ndarray:
        """float (N,): the number of body pixels of each animal (drawn at heading 0)."""
        n = self.number_of_animals
        masks, _ = self.body_masks(np.full((n, 2), 100.25), np.zeros(n))
        return masks.sum(axis=(1, 2)).astype(float)

    def darkness_range(self) -> tuple[float, float]:
        """(lowest, highest) contrast in grey levels of any body pixel, before light and blur."""
        n, k = self.number_of_animals, 2 * self._body_radius + 1
        inside = np.zeros((n, k, k), bool)
        dark = np.zeros((n, k, k), np.float32)
        origin = np.full(n, 100 - self._body_radius, np.int64)
        _raster_all(np.full(n, 100.25), np.full(n, 100.25), np.ones(n), np.zeros(n), self._look,
                    origin, origin, inside, dark, self._limit)
        values = dark[inside]
        return float(values.min()), float(values.max())

    # ------------------------------------------------------------------ images
    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (index, uint8 (height, width) image) for every frame, rendered one by one.

        Each image is a new array: consumers may keep it.
        """
        for index in range(self.n_frames):
            yield index, self.frame(index)

    def frame(self, index: int) -> np.ndarray:
        """The image of frame ``index`` (0-based): uint8 (height, width)."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} is outside 0..{self.n_frames - 1}")
        p = self.positions[index]
        return self._render(np.ascontiguousarray(p[:, 0]), np.ascontiguousarray(p[:, 1]),
                            self._cos[index], self._sin[index], np.arange(self.number_of_animals),
                            int(self._noise_choice[index]))

    def render(self, positions: np.ndarray, headings: np.ndarray, animals: np.ndarray | None = None,
               noise_index: int = 0) -> np.ndarray:
        """One image of animals at given places: uint8 (height, width).

        positions: float (M, 2) x, y of the centres of mass in pixels; headings: float (M,)
        radians; animals: int (M,) which animals (0-based) these are, default 0..M-1;
        noise_index: which frame of the noise bank to use (taken modulo the bank size).
        """
        cx, cy, cos, sin, ids = self._prepare(positions, headings, animals)
        return self._render(cx, cy, cos, sin, ids, noise_index % self._noise.shape[0])

    def _prepare(self, positions, headings, animals):
        """Checked, contiguous float64 x, y, cos, sin (M,) and int64 animal indices (M,)."""
        positions = np.asarray(positions, float).reshape(-1, 2)
        headings = np.asarray(headings, float).reshape(-1)
        ids = np.arange(positions.shape[0]) if animals is None else np.asarray(animals, np.int64).reshape(-1)
        if not (positions.shape[0] == headings.shape[0] == ids.shape[0]):
            raise ValueError("positions, headings and animals must describe the same number of animals")
        if ids.size and (ids.min() < 0 or ids.max() >= self.number_of_animals):
            raise ValueError(f"animals must be in 0..{self.number_of_animals - 1}")
        return (np.ascontiguousarray(positions[:, 0]), np.ascontiguousarray(positions[:, 1]),
                np.cos(headings), np.sin(headings), ids)

    def _make_noise_bank(self, rng: np.random.Generator, sigma: float) -> None:
        """``_noise`` int8 (B, H, W) and the matching noisy ground ``_bank`` uint8 (B, H, W)."""
        if sigma <= 0:
            self._noise = np.zeros((1, self.height, self.width), np.int8)
        else:
            frames = int(np.clip(NOISE_BANK_MAX_BYTES // (2 * self.height * self.width), 2, NOISE_BANK_FRAMES))
            noise = rng.standard_normal((frames, self.height, self.width), dtype=np.float32) * np.float32(sigma)
            self._noise = np.clip(np.rint(noise), -127, 127).astype(np.int8)
        self._bank = np.empty(self._noise.shape, np.uint8)
        for k in range(self._noise.shape[0]):
            self._bank[k] = np.clip(self._clean + self._noise[k] + np.float32(0.5), 0.0, 255.0).astype(np.uint8)

    def _render(self, cx: np.ndarray, cy: np.ndarray, cos: np.ndarray, sin: np.ndarray, animals: np.ndarray,
                noise_index: int) -> np.ndarray:
        image = self._bank[noise_index].copy()
        m = animals.shape[0]
        if m == 0:
            return image
        k = 2 * self._radius + 1
        ox = np.floor(cx).astype(np.int64) - self._radius
        oy = np.floor(cy).astype(np.int64) - self._radius
        inside = np.zeros((m, k, k), bool)
        dark = np.zeros((m, k, k), np.float32)
        _raster_all(cx, cy, cos, sin, self._look[animals], ox, oy, inside, dark, self._limit)
        if self._blur_radius:
            # One call for all animals: the stacked boxes have zero borders wider than the
            # kernel, so no animal bleeds into the next box.
            size = 2 * self._blur_radius + 1
            sigma = self.cfg.blur_sigma
            dark = cv2.GaussianBlur(dark.reshape(m * k, k), (size, size), sigma, sigmaY=sigma,
                                    borderType=cv2.BORDER_CONSTANT).reshape(m, k, k)
        sign = 1.0 if self.light_on_dark else -1.0
        _composite(image, dark, ox, oy, np.float32(self.ground_level), np.float32(sign), self._gain,
                   self._noise[noise_index], self._scratch)
        return image

    # ------------------------------------------------------------------ tracking parameters
    def tracking_parameters(self) -> dict:
        """Top-level toxrt parameters that segment this arena's animals.

        A fixed intensity window when one separates every body pixel from the whole unevenly
        lit ground with room for the noise; otherwise background subtraction, where toxrt
        thresholds ``|background - grey|``.
        """
        low_dark, _ = self.darkness_range()
        gain_lo, gain_hi = float(self._gain.min()), float(self._gain.max())
        room = 3.0 * self.cfg.noise_sigma + 4.0
        if self.light_on_dark:
            ground_hi = self.ground_level * gain_hi
            animal_lo = (self.ground_level + low_dark) * gain_lo
            separable = animal_lo - ground_hi > 2 * room
            window = [round((ground_hi + animal_lo) / 2.0, 1), 255.0]
        else:
            ground_lo = self.ground_level * gain_lo
            animal_hi = (self.ground_level - low_dark) * gain_hi
            separable = ground_lo - animal_hi > 2 * room
            window = [0.0, round((ground_lo + animal_hi) / 2.0, 1)]
        if not separable:
            # Difference to the background: half the weakest body contrast, above the noise.
            window = [round(max(low_dark * gain_lo / 2.0, room), 1), 255.0]
        min_area = float(self.body_area_px().min())
        return {
            "intensity_ths": window,
            "area_ths": [round(max(0.3 * min_area, 4.0), 1), math.inf],
            "use_bkg": not separable,
        }


def write_simulation(out_dir: Path, cfg: SimConfig, number_of_animals: int, progress: bool = False) -> dict[str, Path]:
    """Render a simulated arena to ``out_dir`` with its ground truth and a parameter file.

    Writes ``video.avi`` (lossless FFV1 when available), ``groundtruth.csv`` (frame,id,x,y,crossing;
    0-based frames, ids 1..N, crossing 0/1), ``groundtruth.npz`` (positions, headings, crossing,
    body_length_px, fps, animal_body_length_px) and ``params.toml`` (a toxrt parameter file that
    tracks the video). Returns the paths by kind: video, csv, npz, params.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToxrtError(f"{out_dir}: cannot create the output folder: {exc.strerror}") from None
    arena = SimulatedArena(cfg, number_of_animals)
    paths = {
        "video": out_dir / "video.avi",
        "csv": out_dir / "groundtruth.csv",
        "npz": out_dir / "groundtruth.npz",
        "params": out_dir / "params.toml",
    }
    _write_video(paths["video"], arena, progress)
    _write_csv(paths["csv"], arena)
    np.savez_compressed(
        paths["npz"], positions=arena.positions, headings=arena.headings, crossing=arena.crossing,
        body_length_px=arena.body_length_px, fps=arena.fps,
        animal_body_length_px=2.0 * arena.appearance.half_length)
    params = {
        "name": "simulation",
        "video_paths": [paths["video"].name],
        "number_of_animals": number_of_animals,
        **arena.tracking_parameters(),
        "frames_per_second": arena.fps,
        "sim": config_to_dict(cfg),
    }
    paths["params"].write_text(
        "# Written by toxrt.sim.arena.write_simulation: tracks video.avi in this folder.\n" + to_toml(params))
    logger.info("wrote a simulated arena (%d frames, %d animals) to %s", arena.n_frames, number_of_animals, out_dir)
    return paths


def _write_video(path: Path, arena: SimulatedArena, progress: bool) -> None:
    size = (arena.width, arena.height)
    writer = None
    for codec in VIDEO_CODECS:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), arena.fps, size, isColor=False)
        if writer.isOpened():
            if codec == "MJPG":
                writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
            break
        writer.release()
        writer = None
    if writer is None:
        raise ToxrtError(f"{path}: OpenCV cannot write a video with any of the codecs {VIDEO_CODECS}")
    frames = arena.frames()
    if progress:
        from tqdm import tqdm
        frames = tqdm(frames, total=arena.n_frames, desc="simulate", unit="frame")
    try:
        for _, image in frames:
            writer.write(image)
    finally:
        writer.release()


def _write_csv(path: Path, arena: SimulatedArena) -> None:
    crossing = arena.crossing
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "id", "x", "y", "crossing"])
        for f in range(arena.n_frames):
            for i in range(arena.number_of_animals):
                x, y = arena.positions[f, i]
                writer.writerow([f, i + 1, f"{x:.4f}", f"{y:.4f}", int(crossing[f, i])])
