"""Blob features: invariance of Hu moments, histogram, identification crop, size helpers."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from toxrt.errors import ConfigError
from toxrt.features import (
    blob_features,
    blob_shapes,
    estimate_animal_size,
    identification_image_size,
)
from toxrt.types import BLOB_FIELDS

LIGHT = 220


def draw_animal(image: np.ndarray, centre: tuple[float, float], angle_deg: float, scale: float = 1.0,
                spot: bool = True) -> None:
    """A dark elliptical body (semi-axes 20 x 7 at scale 1) with a lighter spot off-centre.

    The spot breaks the symmetry so the intensity-weighted moments differ from the silhouette's.
    Drawn with 8 bits of sub-pixel precision so rotated and scaled versions stay faithful.
    """
    shift = 8
    f = 1 << shift

    def fixed(x: float, y: float) -> tuple[int, int]:
        return round(x * f), round(y * f)

    cx, cy = centre
    cv2.ellipse(image, fixed(cx, cy), fixed(20 * scale, 7 * scale), angle_deg, 0, 360, 50, -1,
                cv2.LINE_8, shift)
    if spot:
        a = math.radians(angle_deg)
        sx, sy = cx + 9 * scale * math.cos(a), cy + 9 * scale * math.sin(a)
        cv2.ellipse(image, fixed(sx, sy), fixed(6 * scale, 4 * scale), angle_deg, 0, 360, 140, -1,
                    cv2.LINE_8, shift)


def features_of(image: np.ndarray, **kwargs):
    """Features of the dark blobs (grey < 180) of a light image."""
    mask = cv2.inRange(image, 0, 180)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return blob_features(image, contours, **kwargs)


def scene(size=(160, 200), **animal) -> np.ndarray:
    image = np.full(size, LIGHT, np.uint8)
    draw_animal(image, **animal)
    return image


def log_hu(hu: np.ndarray) -> np.ndarray:
    """The usual comparable form of Hu moments: -sign * log10 |hu|."""
    return -np.sign(hu) * np.log10(np.abs(hu))


def test_hu_invariant_under_integer_shift_exactly():
    a = features_of(scene(centre=(80, 70), angle_deg=20))
    b = features_of(scene(centre=(123, 91), angle_deg=20))
    assert len(a) == len(b) == 1
    np.testing.assert_allclose(b.hu, a.hu, rtol=1e-9)


def test_hu_invariant_under_90_degree_rotation():
    image = scene(centre=(90, 70), angle_deg=25)
    a = features_of(image)
    b = features_of(np.ascontiguousarray(np.rot90(image)))
    assert len(a) == len(b) == 1
    np.testing.assert_allclose(b.hu, a.hu, rtol=1e-9, atol=1e-15)
    # the silhouette's orientation turns by 90 degrees (mod 180); rot90 is counter-clockwise
    expected = a.orientation[0] - math.pi / 2
    diff = (b.orientation[0] - expected + math.pi / 2) % math.pi - math.pi / 2
    assert abs(diff) < 1e-9


def test_hu_nearly_invariant_under_30_degree_rotation_and_scale():
    base = features_of(scene(centre=(100, 80), angle_deg=10))
    rotated = features_of(scene(centre=(100, 80), angle_deg=40))
    scaled = features_of(scene(size=(300, 360), centre=(180, 150), angle_deg=10, scale=2.0))
    assert len(base) == len(rotated) == len(scaled) == 1
    # the first four invariants carry most of the shape; compare them on the log scale
    for other in (rotated, scaled):
        np.testing.assert_allclose(log_hu(other.hu[0, :4]), log_hu(base.hu[0, :4]), rtol=0.03)


def test_hu_moments_carry_appearance_not_only_shape():
    plain = features_of(scene(centre=(100, 80), angle_deg=10, spot=False))
    spotted = features_of(scene(centre=(100, 80), angle_deg=10, spot=True))
    assert plain.area[0] == spotted.area[0]  # same silhouette
    assert abs(log_hu(spotted.hu[0, 0]) - log_hu(plain.hu[0, 0])) > 0.01
    assert abs(log_hu(spotted.hu[0, 2]) - log_hu(plain.hu[0, 2])) > 0.1


def test_histogram_sums_to_one_and_tells_patterns_apart():
    plain = features_of(scene(centre=(100, 80), angle_deg=10, spot=False), histogram_bins=16)
    spotted = features_of(scene(centre=(100, 80), angle_deg=10, spot=True), histogram_bins=16)
    for blobs in (plain, spotted):
        assert blobs.histogram.shape == (1, 16) and blobs.histogram.dtype == np.float32
        assert blobs.histogram.sum() == pytest.approx(1.0, abs=1e-6)
    # grey 50 -> bin 3, grey 140 -> bin 8 (16 bins of 16 levels)
    assert plain.histogram[0, 3] == pytest.approx(1.0)
    assert spotted.histogram[0, 8] > 0.1
    assert spotted.histogram[0, 3] + spotted.histogram[0, 8] == pytest.approx(1.0, abs=1e-6)


def moment_orientation(image: np.ndarray) -> float:
    m = cv2.moments(image, True)
    return 0.5 * math.atan2(2 * m["mu11"], m["mu20"] - m["mu02"])


@pytest.mark.parametrize("angle_deg", [0.0, 30.0, 60.0, 90.0, 135.0, 170.0])
def test_crop_is_square_background_free_and_horizontal(angle_deg):
    image = np.full((200, 240), LIGHT, np.uint8)
    draw_animal(image, (117.3, 95.6), angle_deg, spot=False)
    blobs = features_of(image, crop_size=48)
    assert blobs.crop.shape == (1, 48, 48) and blobs.crop.dtype == np.uint8
    crop = blobs.crop[0]
    # background (LIGHT) is masked out: only the body's grey 50 remains, fading to 0 at the rim
    # (bilinear resampling), so pixels above half the body's grey count the area
    assert crop.max() == 50 and crop[0, 0] == 0 and crop[-1, -1] == 0
    assert np.count_nonzero(crop > 25) == pytest.approx(blobs.area[0], rel=0.03)
    inside = crop > 0
    assert abs(moment_orientation(inside.astype(np.uint8))) < math.radians(1.0)
    ys, xs = np.nonzero(crop > 25)
    assert xs.mean() == pytest.approx(23.5, abs=0.6) and ys.mean() == pytest.approx(23.5, abs=0.6)
    assert np.ptp(xs) > 2.3 * np.ptp(ys)  # long side horizontal (the body is 20 x 7)


def test_crop_keeps_grey_values_as_seen():
    image = np.full((200, 240), LIGHT, np.uint8)
    draw_animal(image, (120, 100), 0.0, spot=True)
    crop = features_of(image, crop_size=48).crop[0]
    row = crop[24]  # the horizontal middle line holds the spot at +9 px, grey 140
    assert row[24 + 9] == 140 and row[24 - 9] == 50


def test_geometry_of_an_ellipse():
    image = np.full((200, 240), LIGHT, np.uint8)
    draw_animal(image, (120.0, 100.0), 35.0, scale=1.5, spot=False)
    mask = cv2.inRange(image, 0, 180)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    shapes = blob_shapes(contours)
    assert len(shapes) == 1
    assert shapes.area[0] == np.count_nonzero(mask)
    np.testing.assert_allclose(shapes.centroid[0], (120.0, 100.0), atol=0.1)
    assert shapes.orientation[0] == pytest.approx(math.radians(35.0), abs=math.radians(0.5))
    assert shapes.major_axis[0] == pytest.approx(2 * 20 * 1.5, rel=0.03)
    x, y, w, h = shapes.bbox[0]
    ys, xs = np.nonzero(mask)
    assert (x, y, w, h) == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1)


def test_area_filter_and_crossing_flag():
    image = np.full((200, 300), LIGHT, np.uint8)
    # filled areas (pi * a * b plus half the rim): ~135, ~480, ~1190 px
    draw_animal(image, (50, 100), 0.0, scale=0.5, spot=False)
    draw_animal(image, (140, 100), 0.0, scale=1.0, spot=False)
    draw_animal(image, (240, 100), 0.0, scale=1.6, spot=False)
    everything = features_of(image)
    assert len(everything) == 3
    middle = features_of(image, area_ths=(200.0, 800.0))
    assert len(middle) == 1 and 440 < middle.area[0] < 520
    flagged = features_of(image, single_animal_area=480.0, crossing_area_ratio=1.6)
    order = np.argsort(flagged.area)
    assert flagged.oversized[order].tolist() == [False, False, True]
    assert not features_of(image).oversized.any()  # unknown single-animal area: no flags


def test_no_contours_gives_empty_blobs_with_shapes():
    blobs = blob_features(np.zeros((50, 50), np.uint8), [], histogram_bins=8, crop_size=20)
    assert len(blobs) == 0
    assert blobs.centroid.shape == (0, 2) and blobs.hu.shape == (0, 7)
    assert blobs.histogram.shape == (0, 8) and blobs.crop.shape == (0, 20, 20)
    assert blobs.bbox.shape == (0, 4) and blobs.oversized.shape == (0,)


def test_every_field_filled_with_documented_dtypes():
    blobs = features_of(scene(centre=(100, 80), angle_deg=10), crop_size=32, histogram_bins=8)
    expected = {"centroid": (np.float64, (1, 2)), "area": (np.float64, (1,)),
                "orientation": (np.float64, (1,)), "bbox": (np.int32, (1, 4)),
                "hu": (np.float64, (1, 7)), "histogram": (np.float32, (1, 8)),
                "crop": (np.uint8, (1, 32, 32)), "oversized": (np.bool_, (1,))}
    for name in BLOB_FIELDS:
        value = getattr(blobs, name)
        assert (value.dtype, value.shape) == (np.dtype(expected[name][0]), expected[name][1]), name
        if value.dtype != np.bool_:
            assert np.all(np.isfinite(value.astype(np.float64))), name


def test_estimate_animal_size_is_robust_to_crossings():
    areas = np.array([400.0, 410, 395, 405, 1600, 820])
    lengths = np.array([40.0, 41, 39, 40, 80, 60])
    area, length = estimate_animal_size(areas, lengths)
    assert area == pytest.approx(407.5) and length == pytest.approx(40.5)
    with pytest.raises(ConfigError, match="intensity_ths"):
        estimate_animal_size(np.zeros(0), np.zeros(0))


def test_identification_image_size_even_larger_than_body_and_clamped():
    for body in (13.0, 27.0, 40.0, 51.5, 99.0):
        side = identification_image_size(body)
        assert side % 2 == 0 and side > body
        assert 16 <= side <= 128
    assert identification_image_size(3.0) == 16
    assert identification_image_size(500.0) == 128
    with pytest.raises(ValueError):
        identification_image_size(0.0)


def test_hu_moments_of_all_blobs_at_once_are_opencvs():
    from toxrt.features import hu_moments

    rng = np.random.default_rng(8)
    images = [rng.integers(0, 256, (h, w)).astype(np.uint8) for h, w in ((9, 14), (30, 11), (40, 40), (5, 60))]
    moments = [cv2.moments(image) for image in images]
    nu = np.array([[m[k] for k in ("nu20", "nu11", "nu02", "nu30", "nu21", "nu12", "nu03")] for m in moments])
    expected = np.array([cv2.HuMoments(m).ravel() for m in moments])
    np.testing.assert_allclose(hu_moments(nu), expected, rtol=1e-12, atol=1e-300)
