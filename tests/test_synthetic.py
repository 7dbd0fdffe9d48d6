"""The simulated arena: determinism, geometry of the rendered animals, crossing flags, files."""
from __future__ import annotations

import csv
import dataclasses

import cv2
import numpy as np
import pytest

from toxrt.config import SimConfig, load_config
from toxrt.errors import ConfigError
from toxrt.sim.arena import SimulatedArena
from toxrt.sim.writer import write_simulation

SMALL = SimConfig(width=160, height=120, frames=50, seed=3, body_length_px=22.0)
CLEAN = dataclasses.replace(SMALL, blur_sigma=0.0, noise_sigma=0.0, uneven_light=0.0)


def _animal_pixels(arena: SimulatedArena, image: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels that differ from the ground of a clean (no blur/noise/light) arena."""
    return image != np.uint8(arena.ground_level)


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask grown by ``pixels`` in all 8 directions (a square structuring element)."""
    side = 2 * pixels + 1
    return cv2.dilate(mask.astype(np.uint8), np.ones((side, side), np.uint8)).astype(bool)


def test_same_seed_gives_same_truth_and_frames():
    a, b = SimulatedArena(SMALL, 4), SimulatedArena(SMALL, 4)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.crossing, b.crossing)
    for (i, image_a), (j, image_b) in zip(a.frames(), b.frames()):
        assert i == j
        np.testing.assert_array_equal(image_a, image_b)
    other = SimulatedArena(dataclasses.replace(SMALL, seed=4), 4)
    assert not np.allclose(other.positions, a.positions)


def test_frames_shapes_and_random_access():
    arena = SimulatedArena(SMALL, 3)
    frames = list(arena.frames())
    assert [i for i, _ in frames] == list(range(SMALL.frames))
    for i, image in frames:
        assert image.dtype == np.uint8 and image.shape == (SMALL.height, SMALL.width)
    np.testing.assert_array_equal(arena.frame(17), frames[17][1])
    assert arena.positions.shape == (50, 3, 2) and arena.positions.dtype == np.float64
    assert arena.headings.shape == (50, 3)
    assert arena.crossing.shape == (50, 3) and arena.crossing.dtype == bool
    with pytest.raises(IndexError):
        arena.frame(SMALL.frames)


def test_bodies_stay_inside_the_frame():
    arena = SimulatedArena(CLEAN, 4)
    x, y = arena.positions[..., 0], arena.positions[..., 1]
    assert x.min() > 0 and y.min() > 0 and x.max() < CLEAN.width - 1 and y.max() < CLEAN.height - 1
    for _, image in arena.frames():
        body = _animal_pixels(arena, image)
        assert body.any()
        assert not (body[0].any() or body[-1].any() or body[:, 0].any() or body[:, -1].any())


@pytest.mark.parametrize("light_on_dark", [False, True])
def test_contrast_polarity(light_on_dark):
    arena = SimulatedArena(dataclasses.replace(SMALL, light_on_dark=light_on_dark), 3)
    image = arena.frame(0).astype(float)
    ground = np.median(image)
    xy = np.rint(arena.positions[0]).astype(int)
    on_animals = image[xy[:, 1], xy[:, 0]]
    if light_on_dark:
        assert ground < 80 and np.all(on_animals > ground + 30)
    else:
        assert ground > 150 and np.all(on_animals < ground - 30)


def test_animals_look_different_unless_spread_is_zero():
    def histograms(spread):
        arena = SimulatedArena(dataclasses.replace(CLEAN, appearance_spread=spread), 4)
        image = arena.render(np.full((4, 2), 60.0), np.zeros(4), animals=[0, 1, 2, 3])
        result = []
        for i in range(4):
            alone = arena.render([[60.0, 60.0]], [0.0], animals=[i])
            values = alone[_animal_pixels(arena, alone)]
            result.append(np.bincount(values, minlength=256))
        assert image.shape == (CLEAN.height, CLEAN.width)
        return result

    same = histograms(0.0)
    assert all(np.array_equal(same[0], h) for h in same[1:])
    different = histograms(1.0)
    assert not any(np.array_equal(different[0], h) for h in different[1:])


def test_heading_orients_the_body():
    arena = SimulatedArena(CLEAN, 1)
    for heading, wide_axis in ((0.0, 1), (np.pi / 2, 0)):
        body = _animal_pixels(arena, arena.render([[80.0, 60.0]], [heading]))
        rows, cols = np.nonzero(body)
        spans = (np.ptp(rows), np.ptp(cols))
        assert spans[wide_axis] > 2 * spans[1 - wide_axis]


def test_body_masks_are_the_rendered_pixels():
    arena = SimulatedArena(CLEAN, 3)
    for f in (0, 20, 40):
        masks, origins = arena.body_masks(arena.positions[f], arena.headings[f])
        for i in range(3):
            image = arena.render(arena.positions[f, [i]], arena.headings[f, [i]], animals=[i])
            expected = np.zeros(image.shape, bool)
            k = masks.shape[1]
            x, y = origins[i]
            expected[y:y + k, x:x + k] = masks[i]
            np.testing.assert_array_equal(_animal_pixels(arena, image), expected)
            # The truth is the centre of mass of those pixels, up to rasterisation.
            rows, cols = np.nonzero(expected)
            np.testing.assert_allclose([cols.mean(), rows.mean()], arena.positions[f, i], atol=0.5)


def test_isolated_animal_centroid_matches_truth():
    arena = SimulatedArena(SMALL, 4)  # with blur, noise and uneven light
    threshold = arena.tracking_parameters()["intensity_ths"]
    assert not arena.tracking_parameters()["use_bkg"]
    checked = 0
    for f in range(0, SMALL.frames, 5):
        image = arena.frame(f)
        body = ((image >= threshold[0]) & (image <= threshold[1])).astype(np.uint8)
        _, labels, _, centroids = cv2.connectedComponentsWithStats(body, connectivity=8)
        for i in np.flatnonzero(~arena.crossing[f]):
            x, y = np.rint(arena.positions[f, i]).astype(int)
            label = labels[y, x]
            assert label > 0
            np.testing.assert_allclose(centroids[label], arena.positions[f, i], atol=1.0)
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("blur_sigma, touch_distance", [(0.0, 1), (0.7, 2), (1.6, 3)])
def test_crossing_flags_match_rendered_masks(blur_sigma, touch_distance):
    arena = SimulatedArena(dataclasses.replace(CLEAN, blur_sigma=blur_sigma), 4)
    assert arena.touch_distance_px == touch_distance
    # Body masks from the unblurred twin arena: same seed, so the same animals and paths.
    clean = SimulatedArena(CLEAN, 4)
    np.testing.assert_array_equal(clean.positions, arena.positions)
    n = arena.number_of_animals
    for f in range(CLEAN.frames):
        masks = [_animal_pixels(clean, clean.render(clean.positions[f, [i]], clean.headings[f, [i]], animals=[i]))
                 for i in range(n)]
        for i in range(n):
            grown = _grow(masks[i], touch_distance)
            touches = any((grown & masks[j]).any() for j in range(n) if j != i)
            assert arena.crossing[f, i] == touches, (f, i)
    # The test only means something if both cases occur.
    assert arena.crossing.any() and not arena.crossing.all()


def test_crossing_rate_is_realistic():
    arena = SimulatedArena(SimConfig(), 8)  # 640x480, 1500 frames
    assert 0.03 < arena.crossing.mean() < 0.2


def test_tracking_parameters_segment_one_blob_per_solo_animal():
    arena = SimulatedArena(SMALL, 4)
    params = arena.tracking_parameters()
    low, high = params["intensity_ths"]
    solo_frames = np.flatnonzero(~arena.crossing.any(axis=1))
    assert solo_frames.size > 5
    for f in solo_frames[:10]:
        image = arena.frame(int(f))
        body = ((image >= low) & (image <= high)).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(body, connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        assert np.count_nonzero(areas >= params["area_ths"][0]) == arena.number_of_animals


def test_uneven_light_needs_background_subtraction():
    arena = SimulatedArena(dataclasses.replace(SMALL, uneven_light=0.6), 3)
    params = arena.tracking_parameters()
    assert params["use_bkg"] and params["intensity_ths"][1] == 255.0


def test_write_simulation_round_trip(tmp_path):
    cfg = dataclasses.replace(SMALL, frames=30)
    paths = write_simulation(tmp_path / "sim", cfg, 3)
    arena = SimulatedArena(cfg, 3)

    capture = cv2.VideoCapture(str(paths["video"]))
    read = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        read.append(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image)
    capture.release()
    assert len(read) == cfg.frames
    assert read[0].shape == (cfg.height, cfg.width)
    for i in (0, 15, 29):
        assert np.abs(read[i].astype(int) - arena.frame(i)).mean() < 1.0

    with open(paths["csv"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["frame", "id", "x", "y", "crossing"]
    assert len(rows) == 1 + cfg.frames * 3
    table = np.array(rows[1:], float)
    assert set(table[:, 1].astype(int)) == {1, 2, 3}
    assert table[:, 0].min() == 0 and table[:, 0].max() == cfg.frames - 1
    frame, ident = table[:, 0].astype(int), table[:, 1].astype(int) - 1
    np.testing.assert_allclose(table[:, 2:4], arena.positions[frame, ident], atol=1e-3)
    np.testing.assert_array_equal(table[:, 4].astype(bool), arena.crossing[frame, ident])

    with np.load(paths["npz"]) as truth:
        np.testing.assert_array_equal(truth["positions"], arena.positions)
        np.testing.assert_array_equal(truth["crossing"], arena.crossing)
        assert truth["headings"].shape == (cfg.frames, 3)
        assert float(truth["body_length_px"]) == cfg.body_length_px and float(truth["fps"]) == cfg.fps

    params = load_config(paths["params"])
    assert params.video_paths == [str(paths["video"].resolve())]
    assert params.number_of_animals == 3
    assert params.sim == cfg
    assert params.intensity_ths == arena.tracking_parameters()["intensity_ths"]


def test_bad_settings_raise_config_errors():
    with pytest.raises(ConfigError, match="number_of_animals"):
        SimulatedArena(SMALL, 0)
    with pytest.raises(ConfigError, match="body_length_px"):
        SimulatedArena(dataclasses.replace(SMALL, body_length_px=100.0), 2)
