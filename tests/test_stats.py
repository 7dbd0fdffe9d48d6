"""toxrt stats: kinematics and arena statistics on trajectories with known answers, and the command."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from toxrt.config import StatsConfig, build_config
from toxrt.outputs.results import load_results
from toxrt.outputs.stats import compute, nearest_neighbour_px, per_animal, write_stats

from .helpers import FPS, make_session

@pytest.fixture()
def two_animals(tmp_path):
    """Animal 1 swims along y = 50 at 10 px/frame; animal 2 rests at (150, 20) for 5 s, then moves."""
    frames = 100
    t = np.full((frames, 2, 2), np.nan)
    t[:, 0, 0] = 5 + 1.5 * np.arange(frames)  # 1.5 px/frame = 15 px/s
    t[:, 0, 1] = 50.0
    t[:, 1] = [150.0, 20.0]
    t[50:, 1, 0] = 150.0 - 2.0 * np.arange(50)  # then 20 px/s to the left
    t[90:, 1] = np.nan  # lost for the last second
    return make_session(tmp_path / "session_x", t, length_unit=5.0)


def test_speed_distance_and_walls_in_cm(two_animals):
    results = load_results(two_animals)
    assert results.length_unit == 5.0 and results.unit == "cm"
    cfg = StatsConfig(smooth_sigma_frames=1.0)
    k = compute(results, cfg)
    # 15 px/s at 5 px/cm = 3 cm/s; central differences leave out the first and last frame, and the
    # Gaussian (reflected at the ends, as trajectorytools smooths) bends the first and last few
    np.testing.assert_allclose(k.speed[5:-5, 0], 3.0, atol=1e-4)
    assert np.isnan(k.speed[0, 0]) and np.isnan(k.speed[90:, 1]).all()
    np.testing.assert_allclose(k.acceleration[6:-6, 0], 0.0, atol=1e-3)
    # y = 50 in a 100 px high frame: 50 px from the walls = 10 cm
    np.testing.assert_allclose(k.wall_distance[:, 0][(results.trajectories[:, 0, 0] > 60)
                                                     & (results.trajectories[:, 0, 0] < 140)], 10.0, atol=0.2)
    np.testing.assert_allclose(k.wall_distance[0, 1], 4.0, atol=0.2)  # y = 20: 20 px = 4 cm
    rows = per_animal(results, k)
    assert rows[0]["distance_travelled_cm"] == pytest.approx(3.0 * 98 / FPS, rel=0.03)
    assert rows[0]["time_tracked_s"] == 10.0 and rows[1]["time_tracked_s"] == 9.0
    # animal 2 rests for 5 s (speed 0 < 0.1 body length/s) and is frozen for most of it
    assert 4.4 <= rows[1]["time_frozen_s"] <= 5.0 and rows[0]["time_frozen_s"] == 0.0
    assert rows[0]["time_moving_s"] == pytest.approx(9.8)  # 3 cm/s > 0.5 body lengths (1 cm)/s
    # near the wall: within one body length (2 cm = 10 px): animal 2 at y = 20 is not, nobody is
    assert rows[1]["fraction_near_wall"] == 0.0


def test_zones_and_near_wall_follow_the_config(two_animals):
    results = load_results(two_animals)
    cfg = build_config({"stats": {"near_wall_body_lengths": 2.5,
                                  "zones": [["left", "+ Rectangle [[0, 0], [99, 99]]"],
                                            ["ring", "+ Rectangle [[0, 0], [199, 99]]", "- Rectangle [[10, 10], [189, 89]]"]]}}).stats
    k = compute(results, cfg)
    rows = per_animal(results, k)
    x1 = results.trajectories[:, 0, 0]
    assert rows[0]["time_in_left_s"] == pytest.approx((np.rint(x1) <= 99).sum() / FPS)
    assert rows[1]["time_in_left_s"] == pytest.approx((150 - 2 * np.arange(40) <= 99).sum() / FPS)
    assert rows[0]["time_in_ring_s"] == pytest.approx((np.rint(x1) < 10).sum() / FPS + (np.rint(x1) > 189).sum() / FPS)
    # 2.5 body lengths = 25 px: animal 2 at y = 20 is near the top wall for all its 9 s
    assert rows[1]["time_near_wall_s"] == pytest.approx(9.0)


def test_nearest_neighbour_ignores_missing_animals():
    t = np.array([[[0, 0], [3, 4], [np.nan, np.nan]], [[0, 0], [np.nan, np.nan], [6, 8]]], float)
    d = nearest_neighbour_px(t)
    np.testing.assert_allclose(d[0], [5, 5, np.nan])
    np.testing.assert_allclose(d[1], [10, np.nan, 10])


def test_uncalibrated_sessions_stay_in_pixels(tmp_path, two_animals):
    t = np.load(two_animals / "trajectories" / "trajectories.npy", allow_pickle=True).item()["trajectories"]
    session = make_session(tmp_path / "session_px", t)
    results = load_results(session)
    assert results.unit == "px" and results.length_unit is None
    paths, rows = write_stats(results, StatsConfig())
    assert rows[0]["median_speed_px_per_s"] == pytest.approx(15.0)
    with open(paths["per_animal"]) as handle:
        table = list(csv.DictReader(handle))
    assert [r["identity"] for r in table] == ["1", "2"]
    assert float(table[0]["median_speed_px_per_s"]) == pytest.approx(15.0, rel=1e-5)
    per_frame = np.genfromtxt(paths["per_frame"], delimiter=",", names=True)
    assert len(per_frame) == 100 + 90
    assert "sigma 1 frames" in json.loads(paths["settings"].read_text())["text"]


def test_stats_command_on_a_tracked_video(video_session, tmp_path):
    out = tmp_path / "stats"
    zones = '[["left", "+ Rectangle [[0, 0], [159, 239]]"]]'
    result = subprocess.run([sys.executable, "-m", "toxrt", "stats", str(video_session["session"]), "--out", str(out),
                             "--stats.zones", zones], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "distance cm" in result.stdout and "sigma 1 frames" in result.stdout  # calibrated at 8 px/cm
    table = list(csv.DictReader(open(out / "per_animal.csv")))
    assert len(table) == 4 and all(float(r["distance_travelled_cm"]) > 0 for r in table)
    assert all(0 <= float(r["fraction_in_left"]) <= 1 for r in table)


@pytest.mark.parametrize("flags, message", [
    (["--stats.zones", '[["+ Rectangle [[0, 0], [9, 9]]"]]'], "stats.zones[0]"),
    (["--stats.zones", '[["left", "+ Square [[0, 0], [9, 9]]"]]'], "stats.zones[0] ('left')"),
    (["--px_per_cm", "-3"], "px_per_cm: -3"),
])
def test_stats_mistakes_are_one_line(two_animals, flags, message):
    result = subprocess.run([sys.executable, "-m", "toxrt", "stats", str(two_animals), *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
