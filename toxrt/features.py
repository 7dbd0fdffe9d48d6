"""Per-blob features from contours: geometry, appearance and the identification image.

Every feature is computed on the blob's bounding box only (a few hundred pixels), never on the
whole frame, so the cost grows with the number of blobs and not with the frame size.

Choices that the rest of toxrt relies on:

* **Area** is the pixel count of the filled contour (holes inside the outer contour count as
  blob), the same number ``area_ths`` is compared with.
* **Centroid and orientation** come from the binary moments of that filled mask. The
  orientation is the main axis of the second moments, in (-pi/2, pi/2], measured from +x
  towards +y (image rows grow downwards); head and tail are not distinguished.
* **Hu moments** are those of the blob's *masked grey image* (grey values as seen, outside the
  blob 0), i.e. intensity-weighted moments: they carry the animal's pattern and not only its
  silhouette, which helps to tell individuals apart. Should the blob's grey mass be 0 (a
  pitch-black animal) the binary mask's moments stand in.
* **Histogram**: ``histogram_bins`` equal bins over grey levels 0..255 of the blob's own pixels,
  normalised to sum to 1.
* **Identification image**: an ``s x s`` crop centred on the centroid, rotated so the main axis
  is horizontal, with grey values *as seen* (dark animals stay dark, nothing is inverted) and
  everything outside the blob set to 0. A blob pixel that is itself 0 is indistinguishable from
  background; with 8-bit cameras and a working threshold this is rare and harmless.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .errors import ConfigError
from .types import Blobs

logger = logging.getLogger(__name__)


@dataclass
class BlobShapes:
    """Geometry of the blobs that passed the area filter (n of them).

    index       int64   (n,)   position of each blob's contour in the input contour list
    bbox        int32   (n, 4) x, y, width, height in pixels (full-frame coordinates)
    area        float64 (n,)   pixel count of the filled contour
    centroid    float64 (n, 2) x, y in pixels
    orientation float64 (n,)   main-axis angle in radians, in (-pi/2, pi/2]
    major_axis  float64 (n,)   main-axis length in pixels (4 * sqrt of the largest second
                               moment eigenvalue: the full length of an equivalent ellipse)
    masks       list of n uint8 (height, width) arrays: 255 inside the blob, within its bbox
    """

    index: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    centroid: np.ndarray
    orientation: np.ndarray
    major_axis: np.ndarray
    masks: list[np.ndarray]

    def __len__(self) -> int:
        return int(self.area.shape[0])


def blob_shapes(
    contours: Sequence[np.ndarray],
    area_ths: tuple[float, float] = (0.0, math.inf),
) -> BlobShapes:
    """Fill each contour on its bounding box and keep those with ``min <= area <= max`` pixels.

    contours: OpenCV contours, int32 (k, 1, 2) arrays of x, y points in full-frame coordinates.
    """
    min_area, max_area = area_ths
    index, bboxes, moments, masks = [], [], [], []
    for i, contour in enumerate(contours):
        x, y, w, h = cv2.boundingRect(contour)
        mask = np.zeros((h, w), np.uint8)
        cv2.drawContours(mask, (contour,), 0, 255, cv2.FILLED, offset=(-x, -y))
        # Grey moments of the 0/255 mask are 255 times the binary ones and twice as fast as
        # cv2.moments(mask, binaryImage=True); ratios (centroid, orientation) are unaffected.
        m = cv2.moments(mask)
        m00 = m["m00"] / 255.0
        if not min_area <= m00 <= max_area:
            continue
        index.append(i)
        bboxes.append((x, y, w, h))
        moments.append((m["m00"], m["m10"], m["m01"], m["mu20"], m["mu11"], m["mu02"]))
        masks.append(mask)
    n = len(index)
    if n == 0:
        return BlobShapes(np.zeros(0, np.int64), np.zeros((0, 4), np.int32), np.zeros(0),
                          np.zeros((0, 2)), np.zeros(0), np.zeros(0), [])
    bbox = np.asarray(bboxes, np.int32)
    m00, m10, m01, mu20, mu11, mu02 = np.asarray(moments, np.float64).T
    centroid = np.column_stack((m10 / m00 + bbox[:, 0], m01 / m00 + bbox[:, 1]))
    orientation = 0.5 * np.arctan2(2.0 * mu11, mu20 - mu02)
    # Largest eigenvalue of the normalised second-moment matrix [[mu20, mu11], [mu11, mu02]] / m00;
    # for a filled ellipse with semi-axes a >= b it is a**2 / 4, hence length = 4 * sqrt(lambda).
    half_sum = (mu20 + mu02) / (2.0 * m00)
    radius = np.hypot((mu20 - mu02) / (2.0 * m00), mu11 / m00)
    major_axis = 4.0 * np.sqrt(half_sum + radius)
    area = np.rint(m00 / 255.0)  # pixel counts, exact after rounding
    return BlobShapes(np.asarray(index, np.int64), bbox, area, centroid, orientation, major_axis, masks)


def blob_features(
    image: np.ndarray,
    contours: Sequence[np.ndarray],
    *,
    area_ths: tuple[float, float] = (0.0, math.inf),
    histogram_bins: int = 32,
    crop_size: int = 0,
    single_animal_area: float = 0.0,
    crossing_area_ratio: float = 1.6,
) -> Blobs:
    """All features of the blobs of one frame.

    image: grey uint8 (H, W), the frame the contours were found in.
    contours: OpenCV contours in full-frame coordinates; those whose filled area is outside
        ``area_ths`` are dropped, so ``len(result) <= len(contours)``.
    crop_size: side ``s`` of the identification images; 0 makes ``crop`` (n, 0, 0).
    single_animal_area: pixels; when positive, blobs larger than ``crossing_area_ratio`` times
        it are flagged ``oversized`` (maybe several animals: the linker decides).
    """
    shapes = blob_shapes(contours, area_ths)
    n = len(shapes)
    if n == 0:
        return Blobs.empty(histogram_bins, crop_size)
    nu = np.empty((n, 7))  # normalised central moments, for the Hu invariants of all blobs at once
    histogram = np.empty((n, histogram_bins), np.float32)
    crop = np.zeros((n, crop_size, crop_size), np.uint8)
    hist_size, hist_range = [histogram_bins], [0, 256]
    centre = (crop_size - 1) / 2.0
    orientation = shapes.orientation.tolist()  # Python floats: cheaper in the loop than numpy scalars
    local_centroid = (shapes.centroid - shapes.bbox[:, :2]).tolist()
    for k, ((x, y, w, h), mask) in enumerate(zip(shapes.bbox.tolist(), shapes.masks)):
        grey = image[y:y + h, x:x + w]
        masked = cv2.bitwise_and(grey, mask)
        m = cv2.moments(masked)
        if m["m00"] <= 0.0:  # a blob of pure 0 grey: fall back to its silhouette
            m = cv2.moments(mask, True)
        nu[k] = (m["nu20"], m["nu11"], m["nu02"], m["nu30"], m["nu21"], m["nu12"], m["nu03"])
        histogram[k] = cv2.calcHist((grey,), (0,), mask, hist_size, hist_range).ravel()
        if crop_size:
            # Rotate by -orientation about the centroid (bbox coordinates) and move the centroid
            # to the crop's centre: p' = R(-theta) (p - c) + centre.
            cos, sin = math.cos(orientation[k]), math.sin(orientation[k])
            cx, cy = local_centroid[k]
            affine = np.array((
                (cos, sin, centre - cos * cx - sin * cy),
                (-sin, cos, centre + sin * cx - cos * cy),
            ))
            cv2.warpAffine(masked, affine, (crop_size, crop_size), dst=crop[k],
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    histogram /= shapes.area[:, None].astype(np.float32)
    hu = hu_moments(nu)
    if single_animal_area > 0:
        oversized = shapes.area > crossing_area_ratio * single_animal_area
    else:
        oversized = np.zeros(n, bool)
    return Blobs(
        centroid=shapes.centroid,
        area=shapes.area,
        orientation=shapes.orientation,
        bbox=shapes.bbox,
        hu=hu,
        histogram=histogram,
        crop=crop,
        oversized=oversized,
    )


def hu_moments(nu: np.ndarray) -> np.ndarray:
    """The seven Hu invariants (n, 7) of normalised central moments ``nu`` (n, 7) given in the order
    nu20, nu11, nu02, nu30, nu21, nu12, nu03: ``cv2.HuMoments``' formulas, for all blobs in one pass
    instead of one call per blob."""
    nu20, nu11, nu02, nu30, nu21, nu12, nu03 = nu.T
    t0, t1 = nu30 + nu12, nu21 + nu03
    q0, q1 = t0 * t0, t1 * t1
    n4, s, d = 4.0 * nu11, nu20 + nu02, nu20 - nu02
    hu = np.empty_like(nu)
    hu[:, 0] = s
    hu[:, 1] = d * d + n4 * nu11
    hu[:, 3] = q0 + q1
    hu[:, 5] = d * (q0 - q1) + n4 * t0 * t1
    t0 = t0 * (q0 - 3.0 * q1)
    t1 = t1 * (3.0 * q0 - q1)
    q0, q1 = nu30 - 3.0 * nu12, 3.0 * nu21 - nu03
    hu[:, 2] = q0 * q0 + q1 * q1
    hu[:, 4] = q0 * t0 + q1 * t1
    hu[:, 6] = q1 * t0 - q0 * t1
    return hu


def estimate_animal_size(areas: np.ndarray, major_axis_lengths: np.ndarray) -> tuple[float, float]:
    """(single_animal_area in pixels, body_length_px) as medians over blobs of sampled frames.

    The median is robust to the minority of blobs that are crossings or fragments of animals.
    No blobs at all means the segmentation parameters find nothing: a ConfigError says so.
    """
    areas = np.asarray(areas, np.float64).ravel()
    lengths = np.asarray(major_axis_lengths, np.float64).ravel()
    if areas.size == 0 or lengths.size == 0:
        raise ConfigError("no blobs in the sampled frames to estimate the animal size from; "
                          "check intensity_ths, area_ths, use_bkg and roi_list")
    return float(np.median(areas)), float(np.median(lengths))


def identification_image_size(body_length_px: float, margin: float = 1.2,
                              min_size: int = 16, max_size: int = 128) -> int:
    """Side of the identification image: ``margin`` body lengths, rounded up to even, clamped.

    The crop is rotated so the body lies along its horizontal middle, so a side a little longer
    than one body length holds the whole animal with some context for bent postures.
    """
    if not body_length_px > 0:
        raise ValueError(f"body_length_px must be positive, got {body_length_px!r}")
    side = 2 * math.ceil(margin * body_length_px / 2.0)
    return int(min(max(side, min_size), max_size))
