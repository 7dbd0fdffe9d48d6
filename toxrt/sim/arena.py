"""A simulated arena: N animals seen from above, with exact ground truth.

Each animal is an elongated, head-heavy body with its own size, darkness and internal pattern (a
darker head, transverse stripes, a lighter or darker midline: ``raster.py``), so that the
intensity histograms of the animals differ; how much they differ is ``SimConfig.appearance_spread``
(0 = identical animals). The animals move by correlated random walks (``motion.py``), steer softly
away from the walls, drift mildly towards their nearest neighbour and pass over each other, so
touches and crossings happen regularly. ``writer.py`` renders an arena to a video file.

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

import functools
import logging
import math
from typing import Iterator

import cv2
import numpy as np

from ..config import SimConfig
from ..errors import ConfigError
from .motion import simulate_motion
from .raster import composite, crossings_of, draw_appearance, illumination, raster_all

logger = logging.getLogger(__name__)

# Grey level of the empty arena before illumination, for dark animals on a light ground and
# for the inverted (light-on-dark) scene.
GROUND_LEVEL_LIGHT = 200.0
GROUND_LEVEL_DARK = 45.0
# The noisy background is a bank of a few precomputed frames, chosen at random per frame,
# because drawing a full frame of Gaussian noise costs ~10 ms at 1080p.
NOISE_BANK_FRAMES = 8
NOISE_BANK_MAX_BYTES = 64 * 2**20


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
            crossings_of(self.positions, self._cos, self._sin, self._look, reach, self._body_radius,
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
        raster_all(cx, cy, cos, sin, self._look[ids], ox, oy, inside, np.zeros((0, 0, 0), np.float32), 0.0)
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
        raster_all(np.full(n, 100.25), np.full(n, 100.25), np.ones(n), np.zeros(n), self._look,
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
        raster_all(cx, cy, cos, sin, self._look[animals], ox, oy, inside, dark, self._limit)
        if self._blur_radius:
            # One call for all animals: the stacked boxes have zero borders wider than the
            # kernel, so no animal bleeds into the next box.
            size = 2 * self._blur_radius + 1
            sigma = self.cfg.blur_sigma
            dark = cv2.GaussianBlur(dark.reshape(m * k, k), (size, size), sigma, sigmaY=sigma,
                                    borderType=cv2.BORDER_CONSTANT).reshape(m, k, k)
        sign = 1.0 if self.light_on_dark else -1.0
        composite(image, dark, ox, oy, np.float32(self.ground_level), np.float32(sign), self._gain,
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
