"""Segmentation: background model, ROI mask, intensity threshold and contours.

Semantics follow idtracker.ai's parameters (``intensity_ths``, ``area_ths``, ``use_bkg``,
``background_subtraction_stat``, ``roi_list``):

* without background a pixel is foreground when ``lo <= grey <= hi``;
* with background when ``lo < |background - grey| <= hi``, which finds dark animals on a light
  ground and light animals on a dark ground alike;
* blobs are the outer contours of the foreground inside the ROI (``roi.py``) whose filled pixel
  count is within ``area_ths``.

Per frame, thresholding is three whole-frame OpenCV calls into preallocated buffers (the
background is kept as uint8, rounded, so no float conversion happens per frame), restricted to
the bounding box of the ROI; everything per blob then works on the blob's bounding box.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from .config import BACKGROUND_STATS, Config
from .errors import ConfigError, SourceError
from .features import blob_features, blob_shapes
from .types import Blobs

logger = logging.getLogger(__name__)

_MEDIAN_BLOCK_ROWS = 64  # rows per block for the median: keeps the temporary stack small


def compute_background(frames: Iterable[np.ndarray], stat: str) -> np.ndarray:
    """The per-pixel ``stat`` ("median", "mean", "max" or "min") of grey frames.

    frames: uint8 (H, W) images, typically sampled evenly through the video by the caller.
    Returns float32 (H, W). Mean, max and min stream over the frames; the median keeps the
    frames (50 uint8 1080p frames are 100 MB) and reduces them in blocks of rows so the
    temporary stack stays a few MB.
    """
    if stat not in BACKGROUND_STATS:
        raise ConfigError(f"background_subtraction_stat: {stat!r} is not one of {BACKGROUND_STATS}")
    kept: list[np.ndarray] = []
    acc: np.ndarray | None = None
    count = 0
    for frame in frames:
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise ValueError(f"background frames must be grey (H, W), got shape {frame.shape}")
        if acc is None:
            acc = np.zeros(frame.shape, np.float64) if stat == "mean" else frame.astype(np.float32)
        elif frame.shape != acc.shape:
            raise ValueError(f"background frames differ in shape: {frame.shape} vs {acc.shape}")
        count += 1
        if stat == "median":
            kept.append(frame)
        elif stat == "mean":
            acc += frame
        elif stat == "max":
            np.maximum(acc, frame, out=acc)
        else:
            np.minimum(acc, frame, out=acc)
    if acc is None:
        raise SourceError("no frames to compute the background from")
    if stat == "mean":
        return (acc / count).astype(np.float32)
    if stat != "median":
        return acc
    out = np.empty(acc.shape, np.float32)
    for r0 in range(0, out.shape[0], _MEDIAN_BLOCK_ROWS):
        block = np.stack([f[r0:r0 + _MEDIAN_BLOCK_ROWS] for f in kept])
        out[r0:r0 + _MEDIAN_BLOCK_ROWS] = np.median(block, axis=0)
    logger.debug("median background over %d frames of %s", count, out.shape)
    return out


@dataclass(frozen=True)
class SegmentationParams:
    """What the segmenter needs, in idtracker.ai's terms where they exist.

    intensity_ths: (lo, hi) grey levels, or background differences when ``use_bkg``.
    area_ths: (min, max) blob pixel counts, max may be inf.
    crop_size: side of the identification images in pixels; 0 = no crops yet.
    single_animal_area: pixels; 0 = unknown (no crossing flags yet).
    min_blob_pixels: blobs smaller than this are dropped whatever ``area_ths`` says.
    """

    intensity_ths: tuple[float, float] = (0.0, 155.0)
    area_ths: tuple[float, float] = (50.0, math.inf)
    use_bkg: bool = False
    histogram_bins: int = 32
    crop_size: int = 0
    single_animal_area: float = 0.0
    crossing_area_ratio: float = 1.6
    min_blob_pixels: int = 3

    @staticmethod
    def from_config(config: Config, crop_size: int = 0, single_animal_area: float = 0.0) -> SegmentationParams:
        seg = config.segmentation
        return SegmentationParams(
            intensity_ths=(float(config.intensity_ths[0]), float(config.intensity_ths[1])),
            area_ths=(float(config.area_ths[0]), float(config.area_ths[1])),
            use_bkg=config.use_bkg,
            histogram_bins=seg.histogram_bins,
            crop_size=crop_size,
            single_animal_area=single_animal_area,
            crossing_area_ratio=seg.crossing_area_ratio,
            min_blob_pixels=seg.min_blob_pixels_for_features,
        )


def _uint8_bounds(lo: float, hi: float, strict_low: bool) -> tuple[int, int]:
    """Integer inclusive bounds for cv2.inRange equivalent to lo <(=) v <= hi on integers."""
    low = math.floor(lo) + 1 if strict_low else math.ceil(lo)
    high = math.floor(min(hi, 255.0))
    return max(low, 0), high


class Segmenter:
    """Finds the blobs of grey frames of one fixed size.

    background: float or uint8 (H, W), required when ``params.use_bkg``; rounded to uint8.
    roi_mask: uint8 (H, W), non-zero inside the region of interest, or None for the whole frame.
    Holds preallocated per-frame buffers, so one instance serves one thread.
    """

    def __init__(self, params: SegmentationParams, background: np.ndarray | None = None,
                 roi_mask: np.ndarray | None = None) -> None:
        if params.use_bkg and background is None:
            raise ValueError("use_bkg is set but no background was given")
        self.params = params
        self._background: np.ndarray | None = None
        shape = None
        if params.use_bkg:
            assert background is not None
            self._background = np.clip(np.rint(background), 0, 255).astype(np.uint8)
            shape = self._background.shape
        self._roi: np.ndarray | None = None
        if roi_mask is not None:
            if shape is not None and roi_mask.shape != shape:
                raise ValueError(f"ROI mask shape {roi_mask.shape} differs from background {shape}")
            self._roi = (roi_mask > 0).astype(np.uint8) * 255
            shape = roi_mask.shape
        self._shape = shape
        self._bounds = _uint8_bounds(*params.intensity_ths, strict_low=params.use_bkg)
        self._area_ths = (max(params.area_ths[0], float(params.min_blob_pixels)), params.area_ths[1])
        self._window: tuple[int, int, int, int] | None = None
        self._buffers: tuple[np.ndarray, np.ndarray] | None = None
        if shape is not None:
            self._prepare(shape)

    def _prepare(self, shape: tuple[int, ...]) -> None:
        """Fix the frame size: the work window (ROI bounding box) and the per-frame buffers."""
        height, width = shape[:2]
        if self._roi is not None:
            x, y, w, h = cv2.boundingRect(self._roi)
            if w == 0 or h == 0:
                raise ConfigError("roi_list: the region of interest is empty")
        else:
            x, y, w, h = 0, 0, width, height
        self._shape = (height, width)
        self._window = (x, y, w, h)
        self._buffers = (np.empty((h, w), np.uint8), np.empty((h, w), np.uint8))

    def _check(self, image: np.ndarray) -> None:
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(f"expected a grey uint8 (H, W) image, got {image.dtype} {image.shape}")
        if self._shape is None:
            self._prepare(image.shape)
        elif image.shape != self._shape:
            raise SourceError(f"frame size {image.shape[1]}x{image.shape[0]} differs from the "
                              f"segmentation's {self._shape[1]}x{self._shape[0]} (background/ROI)")

    def foreground(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H', W') mask of the work window, 255 where foreground.

        The window is the ROI's bounding box (the whole frame without ROI); its offset is
        ``self.window[:2]``. The returned array is an internal buffer, overwritten next frame.
        """
        self._check(image)
        x, y, w, h = self._window
        diff, fg = self._buffers
        view = image[y:y + h, x:x + w]
        low, high = self._bounds
        if self._background is not None:
            cv2.absdiff(view, self._background[y:y + h, x:x + w], dst=diff)
            view = diff
        # cv2.threshold is ~2x faster than cv2.inRange; it suffices when one bound is open.
        if high >= 255:
            cv2.threshold(view, low - 1, 255, cv2.THRESH_BINARY, dst=fg)
        elif low <= 0:
            cv2.threshold(view, high, 255, cv2.THRESH_BINARY_INV, dst=fg)
        else:
            cv2.inRange(view, low, high, dst=fg)
        if self._roi is not None:
            cv2.bitwise_and(fg, self._roi[y:y + h, x:x + w], dst=fg)
        return fg

    @property
    def area_ths(self) -> tuple[float, float]:
        """The effective (min, max) blob pixel counts (min raised to ``min_blob_pixels``)."""
        return self._area_ths

    @property
    def window(self) -> tuple[int, int, int, int] | None:
        """x, y, width, height of the part of the frame that is segmented (None before a frame)."""
        return self._window

    def contours(self, image: np.ndarray) -> list[np.ndarray]:
        """Outer contours (full-frame coordinates) that may pass the area filter.

        The polygon area A and perimeter L of a contour bound its filled pixel count P
        (Pick's theorem: A <= P <= A + L / 2 + 1), so contours certainly outside ``area_ths``
        are dropped here, before any pixel work.
        """
        fg = self.foreground(image)
        x, y = self._window[:2]
        found, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
        min_area, max_area = self._area_ths
        kept = []
        for c in found:
            area = cv2.contourArea(c)
            if area > max_area:
                continue
            if area + 0.5 * cv2.arcLength(c, True) + 1.0 < min_area:
                continue
            kept.append(c)
        return kept

    def detect(self, image: np.ndarray) -> Blobs:
        """All blobs of a grey uint8 (H, W) frame, with every feature of ``Blobs`` (n may be 0)."""
        p = self.params
        return blob_features(
            image,
            self.contours(image),
            area_ths=self._area_ths,
            histogram_bins=p.histogram_bins,
            crop_size=p.crop_size,
            single_animal_area=p.single_animal_area,
            crossing_area_ratio=p.crossing_area_ratio,
        )


def segment_sample_frames(
    frames: Iterable[np.ndarray],
    params: SegmentationParams,
    background: np.ndarray | None,
    roi_mask: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(areas, major_axis_lengths), float64 (n,), of all blobs of a few sampled frames.

    Geometry only (no appearance features), to estimate the animal size before tracking:
    ``features.estimate_animal_size(*segment_sample_frames(...))``.
    """
    segmenter = Segmenter(params, background, roi_mask)
    areas, lengths = [], []
    for frame in frames:
        shapes = blob_shapes(segmenter.contours(frame), segmenter.area_ths)
        areas.append(shapes.area)
        lengths.append(shapes.major_axis)
    if not areas:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(areas), np.concatenate(lengths)
