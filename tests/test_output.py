"""Trajectories: assembly from blob rows (with crossing gaps) and idtracker.ai-layout files."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import trajectorytools as tt

from toxrt.io.trajectory_files import area_summary, write_trajectories
from toxrt.trajectories import assemble, assemble_trajectories
from toxrt.types import BLOB_RECORD_DTYPE, Status


def rows(spec: list[tuple[int, float, float, int, bool]]) -> np.ndarray:
    """Blob rows from (frame, x, y, fragment, is_crossing)."""
    out = np.zeros(len(spec), BLOB_RECORD_DTYPE)
    for k, (frame, x, y, fragment, crossing) in enumerate(spec):
        out[k] = (frame, frame / 10, x, y, 300.0 if crossing else 150.0, 0.0, fragment, 0,
                  Status.CROSSING if crossing else Status.MEASURED, 0.0, crossing)
    return out


# Two animals approach, share one crossing blob in frames 4-5, and part; animal 1 then vanishes.
# Fragment 10/11: animal 1 before/after, 20/21: animal 2, 30: the crossing, 40: a far crossing,
# 50: an unidentified fragment.
SPEC = (
    [(f, 10.0 + 5 * f, 50.0, 10, False) for f in range(4)]
    + [(f, 10.0 + 5 * f, 70.0, 20, False) for f in range(4)]
    + [(4, 32.0, 60.0, 30, True), (5, 37.0, 60.0, 30, True), (4, 400.0, 400.0, 40, True)]
    + [(f, 10.0 + 5 * f, 50.0, 11, False) for f in range(6, 9)]
    + [(f, 10.0 + 5 * f, 70.0, 21, False) for f in range(6, 12)]
    + [(f, 300.0, 300.0, 50, False) for f in range(12)]
)
IDENTITY = {10: (1, 0.9), 11: (1, 0.8), 20: (2, 0.95), 21: (2, 0.7)}


def test_assemble_fills_a_crossing_gap():
    trajectories, probabilities, status = assemble_trajectories(rows(SPEC), IDENTITY, 12, 2, max_crossing_gap=3)
    assert trajectories.shape == (12, 2, 2) and trajectories.dtype == np.float64
    assert probabilities.shape == (12, 2, 1) and status.shape == (12, 2) and status.dtype == np.int8
    np.testing.assert_array_equal(trajectories[0:4, 0], [[10, 50], [15, 50], [20, 50], [25, 50]])
    np.testing.assert_array_equal(trajectories[6:12, 1, 0], [40, 45, 50, 55, 60, 65])
    # the gap of frames 4-5 takes the near crossing blob's centroid, not the far one
    np.testing.assert_array_equal(trajectories[4:6, 0], [[32, 60], [37, 60]])
    np.testing.assert_array_equal(trajectories[4:6, 1], [[32, 60], [37, 60]])
    assert (status[4:6] == Status.CROSSING).all() and (status[0:4] == Status.MEASURED).all()
    # idtracker.ai's semantics: NaN inside a crossing, 0 where there is no position
    assert np.isnan(probabilities[4:6]).all()
    np.testing.assert_allclose(probabilities[0, :, 0], [0.9, 0.95])
    np.testing.assert_allclose(probabilities[7, :, 0], [0.8, 0.7])
    # animal 1 is missing at the end: NaN and status -1, never extrapolated
    assert np.isnan(trajectories[9:, 0]).all() and (probabilities[9:, 0] == 0).all()
    assert (status[9:, 0] == -1).all()
    # the unidentified fragment 50 appears nowhere
    assert not np.any(trajectories == 300.0)


def test_assemble_leaves_long_gaps_and_far_blobs_alone():
    trajectories, _, status = assemble_trajectories(rows(SPEC), IDENTITY, 12, 2, max_crossing_gap=1)
    assert np.isnan(trajectories[4:6]).all() and (status[4:6] == -1).all()
    trajectories, _, _ = assemble_trajectories(rows(SPEC), IDENTITY, 12, 2, max_crossing_gap=3,
                                               max_crossing_distance_px=5.0)
    assert np.isnan(trajectories[4:6]).all()  # the crossing blob is 10 px from each track
    trajectories, _, _ = assemble_trajectories(rows(SPEC), IDENTITY, 12, 2, max_crossing_gap=0)
    assert np.isnan(trajectories[4:6]).all()


def test_assemble_conflict_keeps_the_more_probable_row():
    spec = [(0, 1.0, 1.0, 1, False), (0, 9.0, 9.0, 2, False), (1, 2.0, 2.0, 1, False)]
    trajectories, probabilities, _ = assemble_trajectories(rows(spec), {1: (1, 0.6), 2: (1, 0.7)}, 3, 1, 2)
    np.testing.assert_array_equal(trajectories[:2, 0], [[9, 9], [2, 2]])
    np.testing.assert_allclose(probabilities[:3, 0, 0], [0.7, 0.6, 0.0])
    assert np.isnan(trajectories[2]).all()


def test_assemble_empty():
    trajectories, probabilities, status = assemble_trajectories(np.zeros(0, BLOB_RECORD_DTYPE), {}, 5, 3, 4)
    assert trajectories.shape == (5, 3, 2) and np.isnan(trajectories).all() and (status == -1).all()
    assert (probabilities == 0).all()


def test_areas_come_from_individual_blobs_only():
    blobs = rows(SPEC)
    blobs["area"][blobs["fragment"] == 21] = 170.0  # animal 2 after the crossing
    out = assemble(blobs, IDENTITY, 12, 2, max_crossing_gap=3)
    assert np.isnan(out.areas[4:6]).all()  # crossing cells: the crossing blob is not one animal's area
    np.testing.assert_array_equal(out.areas[0], [150.0, 150.0])
    summary = area_summary(out.areas, 2)
    np.testing.assert_allclose(summary["mean"], [150.0, (4 * 150 + 6 * 170) / 10])
    np.testing.assert_allclose(summary["median"], [150.0, 170.0])
    np.testing.assert_allclose(summary["std"][0], 0.0)
    assert np.isnan(area_summary(np.full((3, 2), np.nan), 2)["mean"]).all()


IDTRACKERAI_KEYS = {"trajectories", "id_probabilities", "version", "height", "width", "video_paths",
                    "frames_per_second", "body_length", "estimated_accuracy", "areas", "setup_points",
                    "identities_labels", "identities_groups", "length_unit", "silhouette_score",
                    "fragment_connectivity", "fraction_identified"}
QUALITY = {"estimated_accuracy": 0.93, "fragment_connectivity": 0.5, "silhouette_score": float("nan"),
           "warnings": ["not an idtracker.ai key"]}
META = {"video_paths": ["/videos/a.avi"], "frames_per_second": 10.0, "body_length_px": 25.0,
        "width": 640, "height": 480, "source": "toxrt-refined"}


@pytest.fixture()
def written(tmp_path):
    out = assemble(rows(SPEC), IDENTITY, 12, 2, max_crossing_gap=3)
    paths = write_trajectories(tmp_path / "session_x" / "trajectories", out.trajectories, out.id_probabilities,
                               out.status, META, ["npy", "csv", "h5"], areas=out.areas, quality=QUALITY)
    return tmp_path / "session_x", paths, out.trajectories, out.id_probabilities, out.status


def test_npy_layout(written):
    session, paths, trajectories, probabilities, status = written
    npy = session / "trajectories" / "trajectories.npy"
    assert npy in paths
    data = np.load(npy, allow_pickle=True).item()
    # every key of idtracker.ai 6.0.14's output dict, plus toxrt's own
    assert set(data) == IDTRACKERAI_KEYS | {"status", "source"}
    assert data["estimated_accuracy"] == 0.93 and data["fragment_connectivity"] == 0.5
    assert data["silhouette_score"] is None  # NaN (not measured) is written None, as idtracker.ai does
    assert data["identities_groups"] == {}
    np.testing.assert_allclose(data["areas"]["mean"], [150.0, 150.0])
    assert data["fraction_identified"] == pytest.approx(np.isfinite(trajectories).mean())
    assert data["trajectories"].dtype == np.float64 and data["trajectories"].shape == (12, 2, 2)
    np.testing.assert_array_equal(data["trajectories"], trajectories)
    assert data["id_probabilities"].dtype == np.float64 and data["id_probabilities"].shape == (12, 2, 1)
    np.testing.assert_array_equal(data["id_probabilities"], probabilities)
    assert data["status"].dtype == np.int8 and data["status"].shape == (12, 2)
    assert data["identities_labels"] == ["1", "2"] and data["setup_points"] == {}
    assert data["video_paths"] == ["/videos/a.avi"] and data["frames_per_second"] == 10.0
    assert data["body_length"] == 25.0 and (data["width"], data["height"]) == (640, 480)
    assert data["length_unit"] is None and data["source"] == "toxrt-refined"
    assert isinstance(data["version"], str)


def test_trajectorytools_loads_every_format(written):
    session, paths, trajectories, _, _ = written
    known = ~np.isnan(trajectories)
    folder = session / "trajectories"
    for path in (folder / "trajectories.npy", folder / "trajectories.h5", folder / "trajectories_csv", session):
        tr = tt.Trajectories.from_idtrackerai(path)
        # trajectorytools drops the first and last frame (central differences for velocity)
        assert tr.number_of_individuals == 2 and tr.number_of_frames == 10
        np.testing.assert_allclose(tr.s[known[1:-1]], trajectories[1:-1][known[1:-1]], atol=1e-3)
        assert tr.params["frame_rate"] == 10.0 and tr.params["body_length_px"] == 25.0


def test_csv_layout(written):
    session, paths, trajectories, probabilities, _ = written
    folder = session / "trajectories" / "trajectories_csv"
    lines = (folder / "trajectories.csv").read_text().splitlines()
    assert lines[0] == "time,x1,y1,x2,y2"
    assert len(lines) == 13
    first = lines[1].split(",")
    assert float(first[0]) == 0.0 and [float(v) for v in first[1:]] == [10.0, 50.0, 10.0, 70.0]
    assert float(lines[11].split(",")[0]) == pytest.approx(1.0)  # frame 10 at 10 fps
    assert lines[12].split(",")[1:3] == ["nan", "nan"]
    table = np.loadtxt(folder / "id_probabilities.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(table[:, 1:], probabilities[..., 0], atol=1e-4)
    assert (folder / "id_probabilities.csv").read_text().splitlines()[0] == "time,id1,id2"
    attributes = json.loads((folder / "attributes.json").read_text())
    assert attributes["frames_per_second"] == 10.0 and attributes["identities_labels"] == ["1", "2"]
    assert attributes["estimated_accuracy"] == 0.93 and attributes["length_unit"] is None
    areas = (folder / "areas.csv").read_text().splitlines()
    assert areas == ["mean, median, standard_deviation", "150.0, 150.0, 0.0", "150.0, 150.0, 0.0"]


def test_h5_only_when_asked(written, tmp_path):
    session, paths, trajectories, probabilities, status = written
    with h5py.File(session / "trajectories" / "trajectories.h5") as file:
        np.testing.assert_array_equal(file["trajectories"][()], trajectories)
        np.testing.assert_array_equal(file["status"][()], status)
        assert file.attrs["frames_per_second"] == 10.0 and file.attrs["length_unit"] == -1
        assert sorted(file["areas"]) == ["mean", "median", "std"] and len(file["identities_groups"]) == 0
        assert "setup_points" in file and file.attrs["estimated_accuracy"] == 0.93
        assert "silhouette_score" not in file.attrs  # None: absent, as idtracker.ai writes it
    out = write_trajectories(tmp_path / "t", trajectories, probabilities, status, META, ["npy"],
                             filename="trajectories_live")
    assert [p.name for p in out] == ["trajectories_live.npy", "trajectories_live.npz"]  # npz: pickle-free twin
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["trajectories_live.npy", "trajectories_live.npz"]
