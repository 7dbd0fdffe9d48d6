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

A body pixel is a pixel whose centre lies inside the body outline; with no blur and no noise
these are exactly the pixels that differ from the background. Images are rendered lazily, one
per frame: each animal is drawn into its own small box, so the cost per frame is a copy of a
precomputed noisy background plus a few operations per animal.

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

from .config import SimConfig, config_to_dict, to_toml
from .errors import ConfigError, ToxrtError

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
# Pairs of (frame, animal) body masks compared at once when computing crossings.
CROSSING_CHUNK_PAIRS = 1024
VIDEO_CODECS = ("FFV1", "MJPG")  # lossless first; MJPG as a fallback for builds without FFV1


@dataclass(frozen=True)
class Appearance:
    """Per-animal body geometry and pattern, all arrays of shape (N,).

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

    def take(self, animals: np.ndarray) -> "Appearance":
        return Appearance(*(getattr(self, f.name)[animals] for f in dataclasses.fields(self)))


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
    """Correlated random walks kept inside ``[margin, size - 1 - margin]``.

    margin: float (N,) pixels each animal's centre keeps from the frame edges.
    Returns positions float64 (F, N, 2) (x, y) and headings float64 (F, N) in radians.
    """
    n = margin.shape[0]
    lo = np.stack([margin, margin], axis=1)
    hi = np.stack([width - 1 - margin, height - 1 - margin], axis=1)
    pos = rng.uniform(lo, hi)
    heading = rng.uniform(-math.pi, math.pi, n)
    mean_speed = speed_px * rng.uniform(0.7, 1.3, n)
    speed = mean_speed.copy()
    turn = np.zeros(n)
    # Drawn in bulk: the loop below only combines them.
    turn_noise = rng.standard_normal((n_frames, n)) * 0.1
    speed_noise = rng.standard_normal((n_frames, n)) * (0.25 * speed_px)
    positions = np.empty((n_frames, n, 2))
    headings = np.empty((n_frames, n))
    lookahead = 1.5 * body_length_px
    eye = np.eye(n, dtype=bool)
    for t in range(n_frames):
        positions[t] = pos
        headings[t] = heading
        # Turning rate is an AR(1) process: heading persistence over ~4 frames.
        turn = 0.75 * turn + turn_noise[t]
        direction = np.stack([np.cos(heading), np.sin(heading)], axis=1)
        # Soft walls: turn away from a wall the look-ahead point has crossed, harder the deeper.
        ahead = pos + direction * lookahead
        push = (np.maximum(lo - ahead, 0.0) - np.maximum(ahead - hi, 0.0)) / lookahead
        strength = np.minimum(np.hypot(push[:, 0], push[:, 1]), 1.0)
        steer = 0.35 * strength * _wrap(np.arctan2(push[:, 1], push[:, 0]) - heading)
        if n > 1:
            # Mild attraction to the nearest neighbour when far, so animals meet as often as
            # in a shoal or a small arena rather than as rarely as independent walkers.
            delta = pos[None, :, :] - pos[:, None, :]
            dist = np.hypot(delta[..., 0], delta[..., 1])
            dist[eye] = np.inf
            nearest = np.argmin(dist, axis=1)
            rows = np.arange(n)
            to_nearest = np.arctan2(delta[rows, nearest, 1], delta[rows, nearest, 0])
            far = dist[rows, nearest] > 2.0 * body_length_px
            steer += np.where(far, 0.04 * _wrap(to_nearest - heading), 0.0)
        heading = _wrap(heading + turn + steer)
        speed = np.clip(speed + 0.1 * (mean_speed - speed) + speed_noise[t], 0.0, 3.0 * speed_px)
        pos = pos + speed[:, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        # Hard walls: mirror a step that leaves the allowed box, and the heading with it.
        below, above = pos < lo, pos > hi
        pos = np.where(below, 2 * lo - pos, np.where(above, 2 * hi - pos, pos))
        pos = np.clip(pos, lo, hi)
        flip_x = below[:, 0] | above[:, 0]
        flip_y = below[:, 1] | above[:, 1]
        heading = np.where(flip_x, math.pi - heading, heading)
        heading = _wrap(np.where(flip_y, -heading, heading))
    return positions, headings


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


def illumination(rng: np.random.Generator, width: int, height: int, uneven: float) -> np.ndarray:
    """Gain float32 (height, width) in [1 - uneven, 1]: a vignette plus a linear gradient."""
    if uneven <= 0:
        return np.ones((height, width), np.float32)
    x = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / (width / 2)
    y = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / (height / 2)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    field = 0.6 * (x[None, :] ** 2 + y[:, None] ** 2) + 0.4 * (math.cos(angle) * x[None, :] + math.sin(angle) * y[:, None])
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    return (1.0 - uneven * field).astype(np.float32)


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

        # Every animal is drawn into a (K, K) box around its rounded centre: body plus blur tail.
        self._blur_radius = int(math.ceil(3.0 * cfg.blur_sigma)) if cfg.blur_sigma > 0 else 0
        self._radius = int(math.ceil(self.appearance.extent.max())) + 1 + self._blur_radius + 1
        # Blur darkens a one-pixel gap between two bodies enough for a threshold to bridge it.
        self.touch_distance_px = 1 + (int(math.ceil(cfg.blur_sigma - 0.5)) if cfg.blur_sigma > 0 else 0)
        self._gain = illumination(rng_light, self.width, self.height, cfg.uneven_light)
        self._clean = (np.float32(self.ground_level) * self._gain).astype(np.float32)
        self._make_noise_bank(rng_noise, cfg.noise_sigma)
        self._noise_choice = rng_noise.integers(0, self._noise.shape[0], self.n_frames)
        self._darkness = np.zeros((self.height, self.width), np.float32)  # reused every frame
        logger.debug("simulated arena %dx%d, %d animals, %d frames", self.width, self.height,
                     self.number_of_animals, self.n_frames)

    # ------------------------------------------------------------------ ground truth
    @functools.cached_property
    def crossing(self) -> np.ndarray:
        """bool (F, N): the animal's body is within ``touch_distance_px`` of another's."""
        return self._compute_crossing()

    def body_area_px(self) -> np.ndarray:
        """float (N,): number of body pixels of each animal (drawn at heading 0, centred)."""
        n = self.number_of_animals
        inside, _, _, _ = self._body(np.full(n, 100.0), np.full(n, 100.0), np.ones(n), np.zeros(n),
                                     np.arange(n), with_darkness=False)
        return inside.sum(axis=(1, 2)).astype(float)

    def darkness_range(self) -> tuple[float, float]:
        """(lowest, highest) contrast in grey levels of any body pixel, before light and blur."""
        n = self.number_of_animals
        inside, dark, _, _ = self._body(np.full(n, 100.0), np.full(n, 100.0), np.ones(n), np.zeros(n),
                                        np.arange(n), with_darkness=True)
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
        return self._render(p[:, 0], p[:, 1], self._cos[index], self._sin[index],
                            np.arange(self.number_of_animals), int(self._noise_choice[index]))

    def render(self, positions: np.ndarray, headings: np.ndarray, animals: np.ndarray | None = None,
               noise_index: int = 0) -> np.ndarray:
        """One image of animals at given places: uint8 (height, width).

        positions: float (M, 2) x, y of the centres of mass in pixels; headings: float (M,)
        radians; animals: int (M,) which animals (0-based) these are, default 0..M-1;
        noise_index: which frame of the noise bank to use (taken modulo the bank size).
        """
        positions = np.asarray(positions, float).reshape(-1, 2)
        headings = np.asarray(headings, float).reshape(-1)
        ids = np.arange(positions.shape[0]) if animals is None else np.asarray(animals, np.int64).reshape(-1)
        if not (positions.shape[0] == headings.shape[0] == ids.shape[0]):
            raise ValueError("positions, headings and animals must describe the same number of animals")
        if ids.size and (ids.min() < 0 or ids.max() >= self.number_of_animals):
            raise ValueError(f"animals must be in 0..{self.number_of_animals - 1}")
        return self._render(positions[:, 0], positions[:, 1], np.cos(headings), np.sin(headings),
                            ids, noise_index % self._noise.shape[0])

    def _make_noise_bank(self, rng: np.random.Generator, sigma: float) -> None:
        """``_noise`` int8 (B, H, W) and the matching noisy background ``_bank`` uint8 (B, H, W)."""
        if sigma <= 0:
            self._noise = np.zeros((1, self.height, self.width), np.int8)
        else:
            frames = int(np.clip(NOISE_BANK_MAX_BYTES // (2 * self.height * self.width), 2, NOISE_BANK_FRAMES))
            noise = rng.standard_normal((frames, self.height, self.width), dtype=np.float32) * np.float32(sigma)
            self._noise = np.clip(np.rint(noise), -127, 127).astype(np.int8)
        self._bank = np.empty(self._noise.shape, np.uint8)
        for k in range(self._noise.shape[0]):
            self._bank[k] = _to_uint8(self._clean + self._noise[k])

    def _body(self, cx: np.ndarray, cy: np.ndarray, cos: np.ndarray, sin: np.ndarray, animals: np.ndarray,
              with_darkness: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
        """Body masks (and contrast maps) of M animals, each on its own (K, K) pixel grid.

        Returns inside bool (M, K, K), darkness float32 (M, K, K) or None, and the grids'
        top-left pixel ox, oy int64 (M,). Row r, column c of a grid is pixel (ox + c, oy + r).
        Rendering and the crossing flags both use this function, so they agree exactly.
        """
        look = self.appearance.take(animals)
        k = 2 * self._radius + 1
        steps = np.arange(k)
        ox = np.rint(cx).astype(np.int64) - self._radius
        oy = np.rint(cy).astype(np.int64) - self._radius
        dx = (ox[:, None] + steps) - cx[:, None]  # (M, K) offsets of the grid's columns
        dy = (oy[:, None] + steps) - cy[:, None]
        c, s = cos[:, None, None], sin[:, None, None]
        # Body frame: u forward from the outline's centre, v to the animal's right.
        u = dx[:, None, :] * c + dy[:, :, None] * s + look.centre_shift[:, None, None]
        v = dy[:, :, None] * c - dx[:, None, :] * s
        un = u / look.half_length[:, None, None]
        half_width = look.half_width[:, None, None] * (1.0 + TAPER * un)
        width2 = half_width * half_width
        along = 1.0 - un * un
        inside = (along >= 0) & (v * v <= width2 * along)
        if not with_darkness:
            return inside, None, ox, oy
        un32 = un.astype(np.float32)
        head = np.clip((un32 - 0.2) * 2.5, 0.0, 1.0)
        pattern = 1.0 + look.head_gain[:, None, None].astype(np.float32) * head
        stripes = np.cos(un32 * (2 * math.pi * look.stripe_frequency[:, None, None]).astype(np.float32)
                         + look.stripe_phase[:, None, None].astype(np.float32))
        pattern *= 1.0 - look.stripe_amplitude[:, None, None].astype(np.float32) * 0.5 * (1.0 + stripes)
        midline = np.clip(1.0 - (v * v / np.maximum(0.36 * width2, 1e-9)).astype(np.float32), 0.0, 1.0)
        pattern *= 1.0 + look.midline_gain[:, None, None].astype(np.float32) * midline
        darkness = pattern * look.contrast[:, None, None].astype(np.float32)
        darkness *= inside
        # Keep the scene inside 0..255 before illumination and noise.
        limit = self.ground_level - 8.0 if not self.light_on_dark else 250.0 - self.ground_level
        np.clip(darkness, 0.0, limit, out=darkness)
        return inside, darkness, ox, oy

    def _render(self, cx: np.ndarray, cy: np.ndarray, cos: np.ndarray, sin: np.ndarray, animals: np.ndarray,
                noise_index: int) -> np.ndarray:
        image = self._bank[noise_index].copy()
        m = animals.shape[0]
        if m == 0:
            return image
        _, dark, ox, oy = self._body(cx, cy, cos, sin, animals, with_darkness=True)
        k = dark.shape[1]
        if self._blur_radius:
            # One call for all animals: the stacked boxes have zero borders wider than the
            # kernel, so no animal bleeds into the next box.
            size = 2 * self._blur_radius + 1
            sigma = self.cfg.blur_sigma
            dark = cv2.GaussianBlur(dark.reshape(m * k, k), (size, size), sigma, sigmaY=sigma,
                                    borderType=cv2.BORDER_CONSTANT).reshape(m, k, k)
        boxes = []
        for i in range(m):
            x0, y0 = max(int(ox[i]), 0), max(int(oy[i]), 0)
            x1, y1 = min(int(ox[i]) + k, self.width), min(int(oy[i]) + k, self.height)
            if x1 <= x0 or y1 <= y0:
                continue
            region = (slice(y0, y1), slice(x0, x1))
            patch = dark[i, y0 - oy[i]:y1 - oy[i], x0 - ox[i]:x1 - ox[i]]
            # Overlapping animals: the darker (nearer the viewer's contrast) one shows.
            np.maximum(self._darkness[region], patch, out=self._darkness[region])
            boxes.append(region)
        sign = np.float32(1.0 if self.light_on_dark else -1.0)
        level = np.float32(self.ground_level)
        noise = self._noise[noise_index]
        for region in boxes:
            scene = level + sign * self._darkness[region]
            image[region] = _to_uint8(scene * self._gain[region] + noise[region])
        for region in boxes:
            self._darkness[region] = 0.0
        return image

    # ------------------------------------------------------------------ crossings
    def _compute_crossing(self) -> np.ndarray:
        """bool (F, N) from the body masks of every pair of animals close enough to touch."""
        n_frames, n = self.n_frames, self.number_of_animals
        crossing = np.zeros((n_frames, n), bool)
        if n < 2:
            return crossing
        extent = self.appearance.extent
        first, second = np.triu_indices(n, k=1)
        reach = extent[first] + extent[second] + 2.0 + self.touch_distance_px
        frames_per_chunk = max(1, 2_000_000 // first.size)
        for start in range(0, n_frames, frames_per_chunk):
            stop = min(start + frames_per_chunk, n_frames)
            delta = self.positions[start:stop, first] - self.positions[start:stop, second]
            close_f, close_p = np.nonzero(np.hypot(delta[..., 0], delta[..., 1]) <= reach)
            for lo in range(0, close_f.size, CROSSING_CHUNK_PAIRS):
                f = close_f[lo:lo + CROSSING_CHUNK_PAIRS] + start
                a = first[close_p[lo:lo + CROSSING_CHUNK_PAIRS]]
                b = second[close_p[lo:lo + CROSSING_CHUNK_PAIRS]]
                touch = self._touching(f, a, b)
                crossing[f[touch], a[touch]] = True
                crossing[f[touch], b[touch]] = True
        return crossing

    def _touching(self, f: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """bool (P,): animal a's body pixels lie within ``touch_distance_px`` of animal b's in frame f."""
        pa, pb = self.positions[f, a], self.positions[f, b]
        mask_a, _, ax, ay = self._body(pa[:, 0], pa[:, 1], self._cos[f, a], self._sin[f, a], a, False)
        mask_b, _, bx, by = self._body(pb[:, 0], pb[:, 1], self._cos[f, b], self._sin[f, b], b, False)
        p, k = mask_a.shape[0], mask_a.shape[1]
        g = self.touch_distance_px
        # a's mask grown by g pixels in all 8 directions, on a grid g pixels larger each side.
        padded = np.zeros((p, k + 4 * g, k + 4 * g), bool)
        padded[:, 2 * g:-2 * g, 2 * g:-2 * g] = mask_a
        size = k + 2 * g
        grown = np.zeros((p, size, size), bool)
        for dy in range(2 * g + 1):
            for dx in range(2 * g + 1):
                grown |= padded[:, dy:dy + size, dx:dx + size]
        # Look up b's grid pixels in a's grown grid (origin ax - g, ay - g).
        steps = np.arange(k)
        rows = (by - ay + g)[:, None] + steps
        cols = (bx - ax + g)[:, None] + steps
        row_ok = (rows >= 0) & (rows < size)
        col_ok = (cols >= 0) & (cols < size)
        hit = grown[np.arange(p)[:, None, None], np.clip(rows, 0, size - 1)[:, :, None],
                    np.clip(cols, 0, size - 1)[:, None, :]]
        hit &= row_ok[:, :, None] & col_ok[:, None, :] & mask_b
        return hit.any(axis=(1, 2))

    # ------------------------------------------------------------------ tracking parameters
    def tracking_parameters(self) -> dict:
        """Top-level toxrt parameters that segment this arena's animals.

        A fixed intensity window when one separates every body pixel from the whole unevenly
        lit ground with room for the noise; otherwise background subtraction.
        """
        low_dark, _ = self.darkness_range()
        gain_lo, gain_hi = float(self._gain.min()), float(self._gain.max())
        room = 3.0 * self.cfg.noise_sigma + 4.0
        if self.light_on_dark:
            ground_hi = self.ground_level * gain_hi
            animal_lo = (self.ground_level + low_dark) * gain_lo
            separable = animal_lo - ground_hi > 2 * room
            threshold = (ground_hi + animal_lo) / 2.0
            window = [round(threshold, 1), 255.0]
        else:
            ground_lo = self.ground_level * gain_lo
            animal_hi = (self.ground_level - low_dark) * gain_hi
            separable = ground_lo - animal_hi > 2 * room
            threshold = (ground_lo + animal_hi) / 2.0
            window = [0.0, round(threshold, 1)]
        if not separable:
            # Difference to the background: half the weakest body contrast, above the noise.
            threshold = max(low_dark * gain_lo / 2.0, room)
            window = [round(threshold, 1), 255.0]
        min_area = float(self.body_area_px().min())
        return {
            "intensity_ths": window,
            "area_ths": [round(max(0.3 * min_area, 4.0), 1), math.inf],
            "use_bkg": not separable,
        }


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round float grey levels to uint8, saturating at 0 and 255."""
    return np.clip(values + np.float32(0.5), 0.0, 255.0).astype(np.uint8)


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
        "# Written by toxrt.synthetic.write_simulation: tracks video.avi in this folder.\n" + to_toml(params))
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
