"""toxrt export: the tidy CSV, and SLEAP's analysis h5 loaded by movement."""
import csv
import subprocess
import sys

import numpy as np
import pytest

from toxrt.outputs.export import export_session
from toxrt.outputs.results import load_results


def test_tidy_csv_and_sleap_h5_of_a_tracked_video(video_session, tmp_path):
    results = load_results(video_session["session"])
    tidy, sleap = export_session(results, ["tidy", "sleap"], tmp_path)
    n_frames, n = results.trajectories.shape[:2]

    rows = list(csv.DictReader(open(tidy)))
    assert list(rows[0]) == ["frame", "time", "identity", "x", "y", "status", "probability", "x_cm", "y_cm"]
    assert len(rows) == n_frames * n
    x = np.array([float(r["x"]) for r in rows]).reshape(n_frames, n)
    np.testing.assert_allclose(x, results.trajectories[..., 0], atol=1e-3)
    status = np.array([r["status"] for r in rows]).reshape(n_frames, n)
    assert set(status[results.status == 2]) <= {"crossing"} and set(status[results.status == -1]) <= {"missing"}
    assert (status == "measured").mean() > 0.8
    assert float(rows[7]["time"]) == pytest.approx(1 / results.fps)  # frame 1, identity 4
    assert float(rows[0]["x_cm"]) == pytest.approx(float(rows[0]["x"]) / 8.0, abs=1e-3)

    from movement.io import load_poses

    ds = load_poses.from_sleap_file(sleap, fps=results.fps)
    position = ds.position.transpose("time", "individuals", "space", "keypoints").values[..., 0]
    assert position.shape == (n_frames, n, 2)
    np.testing.assert_allclose(position, results.trajectories, rtol=1e-6, equal_nan=True)  # float32 in movement
    assert list(ds.individuals.values) == ["1", "2", "3", "4"] and list(ds.keypoints.values) == ["centroid"]
    assert ds.time.values[1] == pytest.approx(1 / results.fps)
    confidence = ds.confidence.transpose("time", "individuals", "keypoints").values[..., 0]
    measured = results.status == 0
    np.testing.assert_allclose(confidence[measured], results.probability[measured], atol=1e-6)


def test_export_command(video_session, tmp_path):
    result = subprocess.run([sys.executable, "-m", "toxrt", "export", str(video_session["session"]),
                             "--format", "tidy", "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "trajectories_tidy.csv").exists() and not (tmp_path / "simulation.analysis.h5").exists()
    missing = subprocess.run([sys.executable, "-m", "toxrt", "export", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr
