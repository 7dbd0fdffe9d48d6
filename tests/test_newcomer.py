"""From a video to a report in the README's three commands (the install is make's job)."""
import subprocess
import sys
import tomllib

import pytest


@pytest.mark.slow
def test_video_to_report_without_a_parameter_file(video_session, tmp_path):
    params = tomllib.loads(video_session["params"].read_text())  # the simulator's thresholds for its video
    video = tmp_path / "fish.avi"
    video.symlink_to(video_session["video"])
    track = subprocess.run(
        [sys.executable, "-m", "toxrt", "track", "--video_paths", "fish.avi", "--number_of_animals", "4",
         "--intensity_ths", str(params["intensity_ths"]), "--area_ths", "[45, inf]", "--quiet",
         "--streaming.publish_address", "", "--streaming.marker_address", ""],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert track.returncode == 0, track.stderr
    assert (tmp_path / "session_fish" / "trajectories" / "trajectories.npy").exists()
    report = subprocess.run([sys.executable, "-m", "toxrt", "report", "session_fish"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert "written: session_fish/report.html" in report.stdout
    assert (tmp_path / "session_fish" / "report.html").stat().st_size > 50_000
