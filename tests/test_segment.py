"""Segmentation: background model, thresholds, ROI, render-and-recover of known animals."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from toxrt.config import Config
from toxrt.errors import ConfigError, SourceError
from toxrt.features import estimate_animal_size
from toxrt.roi import roi_mask_from_list
from toxrt.segment import (
    SegmentationParams,
    Segmenter,
    compute_background,
    segment_sample_frames,
)

SUPER = 5  # supersampling: edge pixels get partial grey levels; odd, so no pixel is exactly half covered


def _draw(big: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float, grey: float) -> None:
    f = 1 << 8
    # low-res pixel centre x covers high-res pixels SUPER*x .. SUPER*x + SUPER - 1
    centre = (round((SUPER * cx + (SUPER - 1) / 2) * f), round((SUPER * cy + (SUPER - 1) / 2) * f))
    axes = (round(SUPER * a * f), round(SUPER * b * f))
    cv2.ellipse(big, centre, axes, angle, 0, 360, float(grey), -1, cv2.LINE_8, 8)


def render(ground: np.ndarray, animals: list[tuple[float, float, float, float, float, int]]) -> np.ndarray:
    """Grey uint8 image of ``ground`` (float (H, W)) with filled ellipses drawn on it.

    animals: (cx, cy, a, b, angle_deg, grey) with sub-pixel centre and semi-axes in pixels.
    Rendered at SUPER x resolution and area-averaged: edge pixels get partial grey levels.
    """
    h, w = ground.shape
    big = cv2.resize(ground.astype(np.float32), (w * SUPER, h * SUPER), interpolation=cv2.INTER_NEAREST)
    for animal in animals:
        _draw(big, *animal)
    small = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def rendered_area(cx: float, cy: float, a: float, b: float, angle: float, *_) -> float:
    """The exact area in low-res pixels that ``render`` covers with this animal.

    It exceeds pi * a * b by the rasteriser's half-pixel rim (about 3% here).
    """
    margin = int(a) + 3
    big = np.zeros((2 * margin * SUPER, 2 * margin * SUPER), np.uint8)
    _draw(big, cx - int(cx) + margin, cy - int(cy) + margin, a, b, angle, 1)
    return np.count_nonzero(big) / SUPER**2


def random_animals(rng: np.random.Generator, n: int, width: int, height: int, grey) -> list:
    """n non-overlapping animals (semi-axes 12..16 x 5..6 px) at random sub-pixel positions."""
    animals: list = []
    while len(animals) < n:
        cx, cy = rng.uniform(25, width - 25), rng.uniform(25, height - 25)
        if all(math.hypot(cx - o[0], cy - o[1]) > 40 for o in animals):
            g = grey if np.isscalar(grey) else grey[len(animals) % len(grey)]
            animals.append((cx, cy, rng.uniform(12, 16), rng.uniform(5, 6), rng.uniform(0, 180), int(g)))
    return animals


def assert_recovered(blobs, animals, centre_px: float = 0.5, area_rel: float = 0.03) -> None:
    """Each rendered animal matches exactly one blob, by nearest centroid."""
    assert len(blobs) == len(animals)
    truth = np.array([(a[0], a[1]) for a in animals])
    dist = np.linalg.norm(blobs.centroid[:, None, :] - truth[None, :, :], axis=2)
    match = dist.argmin(axis=0)
    assert len(set(match.tolist())) == len(animals)
    for k, (cx, cy, a, b, _, _) in enumerate(animals):
        assert dist[match[k], k] < centre_px, (k, dist[match[k], k])
        assert blobs.area[match[k]] == pytest.approx(rendered_area(*animals[k]), rel=area_rel)


def params(**kwargs) -> SegmentationParams:
    defaults = dict(area_ths=(50.0, math.inf), histogram_bins=16, crop_size=32)
    defaults.update(kwargs)
    return SegmentationParams(**defaults)


def test_dark_animals_on_light_ground_without_background():
    rng = np.random.default_rng(1)
    animals = random_animals(rng, 8, 320, 240, grey=60)
    image = render(np.full((240, 320), 200.0), animals)
    blobs = Segmenter(params(intensity_ths=(0.0, 130.0))).detect(image)
    assert_recovered(blobs, animals)
    assert blobs.crop.shape == (8, 32, 32) and blobs.histogram.shape == (8, 16)


def test_light_animals_on_dark_ground_without_background():
    rng = np.random.default_rng(2)
    animals = random_animals(rng, 8, 320, 240, grey=190)
    image = render(np.full((240, 320), 40.0), animals)
    blobs = Segmenter(params(intensity_ths=(115.0, 255.0))).detect(image)
    assert_recovered(blobs, animals)


@pytest.mark.parametrize("contrast", [-70, 70], ids=["dark", "light"])
def test_background_subtraction_on_uneven_light(contrast):
    rng = np.random.default_rng(3)
    height, width = 240, 320
    ground = np.tile(np.linspace(90, 170, width), (height, 1)) + np.linspace(-20, 20, height)[:, None]
    noise = lambda: rng.normal(0, 1.5, (height, width))  # noqa: E731
    # animals move between the frames sampled for the background, so the median recovers the ground
    samples = []
    for _ in range(7):
        animals = random_animals(rng, 6, width, height, grey=0)
        samples.append(render(ground + noise(), [a[:5] + (0,) for a in animals]))
    background = compute_background(samples, "median")
    assert np.abs(background - ground).mean() < 1.0
    # animals contrast with the local ground; the thresholds are on |background - grey|
    animals = random_animals(rng, 6, width, height, grey=0)
    image = render(ground + noise(), [])
    for cx, cy, a, b, angle, _ in animals:
        grey = int(np.clip(ground[int(cy), int(cx)] + contrast, 0, 255))
        image = np.minimum(image, render(ground, [(cx, cy, a, b, angle, grey)])) if contrast < 0 else \
            np.maximum(image, render(ground, [(cx, cy, a, b, angle, grey)]))
    blobs = Segmenter(params(intensity_ths=(35.0, 255.0), use_bkg=True), background).detect(image)
    assert_recovered(blobs, animals)


def test_threshold_bounds_follow_idtracker_semantics():
    ramp = np.arange(256, dtype=np.uint8)[None, :].repeat(2, axis=0)
    values = lambda mask: np.nonzero(mask[0])[0].tolist()  # noqa: E731
    # without background: lo <= grey <= hi, inclusive (three code paths: both, open high, open low)
    assert values(Segmenter(params(intensity_ths=(10.0, 20.0))).foreground(ramp)) == list(range(10, 21))
    assert values(Segmenter(params(intensity_ths=(10.5, 20.7))).foreground(ramp)) == list(range(11, 21))
    assert values(Segmenter(params(intensity_ths=(250.0, 255.0))).foreground(ramp)) == list(range(250, 256))
    assert values(Segmenter(params(intensity_ths=(0.0, 5.0))).foreground(ramp)) == list(range(0, 6))
    # with background: lo < |background - grey| <= hi
    background = np.full(ramp.shape, 100.0, np.float32)
    seg = Segmenter(params(intensity_ths=(10.0, 20.0), use_bkg=True), background)
    assert values(seg.foreground(ramp)) == list(range(80, 90)) + list(range(111, 121))
    seg = Segmenter(params(intensity_ths=(150.0, 255.0), use_bkg=True), background)
    assert values(seg.foreground(ramp)) == list(range(251, 256))


def test_area_thresholds_filter_blobs():
    ground = np.full((200, 400), 200.0)
    sizes = [(6, 3), (12, 5), (20, 8), (30, 12)]  # areas ~57, ~188, ~503, ~1131
    animals = [(60 + 90 * i, 100.0, a, b, 0.0, 50) for i, (a, b) in enumerate(sizes)]
    image = render(ground, animals)
    seg = lambda lo, hi: Segmenter(params(intensity_ths=(0, 125), area_ths=(lo, hi))).detect(image)  # noqa: E731
    assert len(seg(0, math.inf)) == 4
    expected = [rendered_area(*a) for a in animals[1:3]]
    np.testing.assert_allclose(np.sort(seg(100, 800).area), expected, rtol=0.02)
    assert len(seg(600, math.inf)) == 1
    assert len(seg(2000, math.inf)) == 0
    # a blob exactly at a threshold is kept (inclusive bounds on the pixel count)
    exact = seg(0, math.inf).area
    assert len(seg(exact.min(), exact.max())) == 4
    assert len(seg(exact.min() + 1, exact.max() - 1)) == 2


def test_min_blob_pixels_drops_specks_whatever_area_ths_says():
    image = np.full((50, 50), 200, np.uint8)
    image[10, 10] = 0
    image[30:32, 30] = 0
    image[40:43, 40:43] = 0
    assert len(Segmenter(params(intensity_ths=(0, 100), area_ths=(0, math.inf), min_blob_pixels=1)).detect(image)) == 3
    blobs = Segmenter(params(intensity_ths=(0, 100), area_ths=(0, math.inf), min_blob_pixels=3)).detect(image)
    assert blobs.area.tolist() == [9.0]


def test_empty_frame_gives_no_blobs_with_shaped_arrays():
    blobs = Segmenter(params(intensity_ths=(0, 100), crop_size=24)).detect(np.full((120, 160), 200, np.uint8))
    assert len(blobs) == 0
    assert blobs.centroid.shape == (0, 2) and blobs.hu.shape == (0, 7)
    assert blobs.histogram.shape == (0, 16) and blobs.crop.shape == (0, 24, 24)


def test_frame_of_another_size_is_an_error():
    seg = Segmenter(params(intensity_ths=(0, 100)))
    seg.detect(np.full((120, 160), 200, np.uint8))
    with pytest.raises(SourceError, match="160x120"):
        seg.detect(np.full((100, 160), 200, np.uint8))
    with pytest.raises(ValueError):
        Segmenter(params(use_bkg=True), None)


@pytest.mark.parametrize("stat", ["median", "mean", "max", "min"])
def test_compute_background_each_stat(stat):
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (37, 53), dtype=np.uint8) for _ in range(6)]
    expected = getattr(np, stat)(np.stack(frames).astype(np.float64), axis=0)
    background = compute_background(iter(frames), stat)
    assert background.dtype == np.float32 and background.shape == (37, 53)
    np.testing.assert_allclose(background, expected, rtol=0, atol=1e-4)


def test_compute_background_median_spans_row_blocks_and_errors():
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (150, 20), dtype=np.uint8) for _ in range(5)]  # > one block
    np.testing.assert_array_equal(compute_background(frames, "median"), np.median(np.stack(frames), axis=0))
    with pytest.raises(ConfigError, match="mode"):
        compute_background(frames, "mode")
    with pytest.raises(SourceError):
        compute_background([], "median")


def test_roi_masks_add_remove_and_shapes():
    assert roi_mask_from_list([], 50, 60) is None
    square = "+ Polygon [[10, 10], [40, 10], [40, 30], [10, 30]]"
    mask = roi_mask_from_list([square], 50, 60)
    assert mask.dtype == np.uint8 and mask.shape == (50, 60)
    assert mask[20, 25] == 255 and mask[10, 10] == 255 and mask[5, 5] == 0 and mask[31, 25] == 0
    hole = "- Ellipse {'center': [25, 20], 'axes': [5, 3], 'angle': 0}"
    mask = roi_mask_from_list([square, hole], 50, 60)
    assert mask[20, 25] == 0 and mask[20, 29] == 0 and mask[20, 32] == 255 and mask[12, 12] == 255
    # a leading '-' starts from the whole frame
    mask = roi_mask_from_list([hole], 50, 60)
    assert mask[20, 25] == 0 and mask[0, 0] == 255 and mask[49, 59] == 255
    # rectangles: corners inclusive; rotated ellipse: long axis along the diagonal
    mask = roi_mask_from_list(["+ Rectangle [[2, 3], [7, 9]]"], 20, 20)
    assert np.count_nonzero(mask) == 6 * 7 and mask[3, 2] == 255 and mask[9, 7] == 255
    mask = roi_mask_from_list(["+ Ellipse {'center': [50, 50], 'axes': [40, 5], 'angle': 45}"], 100, 100)
    assert mask[70, 70] == 255 and mask[30, 70] == 0


@pytest.mark.parametrize("bad", [
    "+ Polygon [[1, 2], [3",
    "* Polygon [[1, 2], [3, 4], [5, 6]]",
    "+ Circle [[1, 2]]",
    "+ Polygon [[1, 2], [3, 4]]",
    "+ Ellipse {'center': [5, 5]}",
    "+ Rectangle [[1, 2, 3]]",
])
def test_malformed_roi_raises_config_error_naming_it(bad):
    with pytest.raises(ConfigError) as info:
        roi_mask_from_list(["+ Rectangle [[0, 0], [9, 9]]", bad], 20, 20)
    assert "roi_list[1]" in str(info.value) and repr(bad) in str(info.value)


def test_roi_restricts_blobs_and_keeps_full_frame_coordinates():
    rng = np.random.default_rng(6)
    animals = random_animals(rng, 10, 320, 240, grey=60)
    image = render(np.full((240, 320), 200.0), animals)
    roi = roi_mask_from_list(["+ Rectangle [[150, 0], [319, 239]]",
                              "- Polygon [[250, 0], [319, 0], [319, 60], [250, 60]]"], 240, 320)
    inside = [a for a in animals if a[0] > 165 and not (a[0] > 235 and a[1] < 75)]
    outside_far = [a for a in animals if a[0] < 135 or (a[0] > 265 and a[1] < 45)]
    seg = Segmenter(params(intensity_ths=(0, 130)), None, roi)
    blobs = seg.detect(image)
    assert seg.window == (150, 0, 170, 240)
    # animals well inside are found at their true full-frame positions; those well outside are not
    for cx, cy, a, b, _, _ in inside:
        d = np.hypot(blobs.centroid[:, 0] - cx, blobs.centroid[:, 1] - cy)
        assert d.min() < 0.5
    for cx, cy, *_ in outside_far:
        d = np.hypot(blobs.centroid[:, 0] - cx, blobs.centroid[:, 1] - cy) if len(blobs) else np.array([99.0])
        assert d.min() > 10
    assert len(inside) >= 2 and len(outside_far) >= 2  # the seed gives a meaningful scene


def test_sample_frames_give_animal_size():
    rng = np.random.default_rng(7)
    frames, truth_areas = [], []
    for _ in range(3):
        animals = [(cx, cy, 15.0, 5.5, angle, 60) for cx, cy, _, _, angle, _ in
                   random_animals(rng, 6, 320, 240, grey=60)]
        frames.append(render(np.full((240, 320), 200.0), animals))
        truth_areas += [rendered_area(*a) for a in animals]
    areas, lengths = segment_sample_frames(frames, params(intensity_ths=(0, 130), crop_size=0), None, None)
    assert areas.shape == lengths.shape == (18,)
    area, body = estimate_animal_size(areas, lengths)
    assert area == pytest.approx(np.median(truth_areas), rel=0.03)
    assert body == pytest.approx(30.0, rel=0.05)


def test_params_from_config():
    config = Config(intensity_ths=[10.0, 90.0], area_ths=[20.0, math.inf], use_bkg=True)
    p = SegmentationParams.from_config(config, crop_size=40, single_animal_area=300.0)
    assert p.intensity_ths == (10.0, 90.0) and p.area_ths == (20.0, math.inf) and p.use_bkg
    assert p.histogram_bins == config.segmentation.histogram_bins and p.crop_size == 40
    assert p.crossing_area_ratio == config.segmentation.crossing_area_ratio
    assert p.min_blob_pixels == config.segmentation.min_blob_pixels_for_features


def test_empty_roi_is_a_config_error():
    roi = roi_mask_from_list(["- Rectangle [[0, 0], [59, 49]]"], 50, 60)
    assert not roi.any()
    with pytest.raises(ConfigError, match="roi_list"):
        Segmenter(params(intensity_ths=(0, 100)), None, roi)
