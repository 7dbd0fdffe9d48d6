"""toxrt video: overlay videos read back with OpenCV and decoded by headless Chromium."""
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tools.headless_chromium import Chromium, find_chromium, probe_video
from toxrt.io.session_reader import load_session_config
from toxrt.outputs.results import load_results
from toxrt.outputs.video import VideoOptions, identity_colours, make_videos


def read_all(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            return frames
        frames.append(image)


def test_overlay_video_draws_each_identity_in_its_colour(video_session, tmp_path):
    results = load_results(video_session["session"])
    config = load_session_config(video_session["session"])
    options = VideoOptions(start=20, end=60, scale=0.5, trail=10)
    (path,) = make_videos(results, config, options, tmp_path, progress=False)
    assert path.suffix == ".webm"
    frames = read_all(path)
    assert len(frames) == 40 and frames[0].shape == (120, 160, 3)
    colours = identity_colours(results.n_animals)
    for offset in (5, 25):
        index = 20 + offset
        image = frames[offset].astype(int)
        for j in range(results.n_animals):
            if results.status[index, j] != 0:
                continue
            x, y = np.rint(results.trajectories[index, j] * 0.5).astype(int)
            window = image[max(0, y - 6):y + 7, max(0, x - 6):x + 7]
            bgr = np.array(colours[j][::-1])
            # the identity's ring is drawn around its position (VP8 is lossy: allow a margin)
            assert (np.abs(window - bgr).max(axis=-1) < 60).sum() >= 4, (index, j)


def test_one_video_per_animal(video_session, tmp_path):
    results = load_results(video_session["session"])
    config = load_session_config(video_session["session"])
    paths = make_videos(results, config, VideoOptions(end=30, per_animal=True, crop_body_lengths=4), tmp_path,
                        progress=False)
    assert [p.name for p in paths] == [f"simulation_id{k}.webm" for k in range(1, 5)]
    for path in paths:
        frames = read_all(path)
        assert len(frames) == 30 and frames[0].shape[0] == frames[0].shape[1]


def test_the_video_plays_in_chromium(video_session, tmp_path):
    if find_chromium() is None:
        pytest.skip("chromium is not installed (tools/install_system_deps.sh installs it)")
    results = load_results(video_session["session"])
    config = load_session_config(video_session["session"])
    (path,) = make_videos(results, config, VideoOptions(end=50), tmp_path, progress=False)
    with Chromium() as browser:
        seen = probe_video(browser, path, at_s=1.0)
    assert seen.get("error") is None, seen
    assert (seen["width"], seen["height"]) == (320, 240) and seen["duration"] == pytest.approx(2.0, abs=0.1)
    assert 50 < seen["mean"] < 250  # a decoded picture, not a black or empty frame


def test_video_command_and_its_mistakes(video_session, tmp_path):
    args = [sys.executable, "-m", "toxrt", "video", str(video_session["session"]), "--out", str(tmp_path), "--quiet"]
    result = subprocess.run(args + ["--end", "10", "--codec", "vp9"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "written:" in result.stdout and (tmp_path / "simulation_tracked.webm").exists()
    assert result.stderr == ""  # OpenCV's FFmpeg tag warning is kept off the terminal
    bad = subprocess.run(args + ["--start", "500"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "frame range" in bad.stderr and "Traceback" not in bad.stderr
