"""`toxrt finish`: sessions whose run was killed are finished from what was recorded, never marked
complete without their trajectories, never left with a temporary file as their only output."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from toxrt.config import build_config, config_to_dict, to_toml
from toxrt.sim.arena import SimulatedArena

from .helpers import toxrt

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def arena_params(tmp_path: Path, frames: int, realtime: bool) -> Path:
    values = {"name": "killed", "video_paths": ["sim:killed"], "number_of_animals": 4,
              "output_dir": str(tmp_path), "trajectories_formats": ["npy", "csv"],
              "sim": {"frames": frames, "seed": 3, "width": 320, "height": 240, "fps": 50.0, "body_length_px": 20},
              "streaming": {"realtime": realtime, "publish_address": "", "marker_address": ""},
              "recording": {"flush_interval_s": 0.2}}
    arena = SimulatedArena(build_config(values).sim, 4)
    config = build_config({**values, **arena.tracking_parameters()})
    path = tmp_path / "params.toml"
    path.write_text(to_toml(config_to_dict(config)))
    return path


def wait_for_frames(session: Path, frames: int, process: subprocess.Popen, timeout_s: float = 60) -> int:
    """Poll session.json until the recording holds ``frames`` frames (the writer's own count)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            recorded = json.loads((session / "session.json").read_text()).get("n_frames", 0)
        except (OSError, ValueError):
            recorded = 0
        if recorded >= frames:
            return recorded
        time.sleep(0.05)
    ended = process.stderr.read() if process.poll() is not None else ""
    raise AssertionError(f"the recording never reached {frames} frames: {ended}")


def assert_finished(session: Path, frames_at_least: int) -> dict:
    meta = json.loads((session / "session.json").read_text())
    assert meta["complete"] is True and meta["summary"]["finished_by"] == "toxrt finish"
    data = np.load(session / "trajectories" / "trajectories.npy", allow_pickle=True).item()
    assert data["trajectories"].shape[1:] == (4, 2) and len(data["trajectories"]) >= frames_at_least
    assert (session / "trajectories" / "trajectories_csv" / "trajectories.csv").is_file()
    assert not list(session.rglob("*.tmp"))
    assert not (session / "toxrt.lock").exists()
    return meta


@pytest.mark.slow
def test_a_session_killed_while_tracking_is_refused_while_alive_and_finished_after(tmp_path):
    params = arena_params(tmp_path, frames=30000, realtime=True)  # ten minutes: it must be killed
    session = tmp_path / "session_killed"
    track = subprocess.Popen([sys.executable, "-m", "toxrt", "track", "--load", str(params), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for_frames(session, 50, track)
        busy = toxrt("finish", str(session))  # the recording process is alive: refused, by PID
        assert busy.returncode == 2 and "Traceback" not in busy.stderr
        assert f"process {track.pid}" in busy.stderr.strip().splitlines()[-1]
        overwrite = toxrt("track", "--load", str(params), "--overwrite", "--quiet")
        assert overwrite.returncode == 2 and f"process {track.pid}" in overwrite.stderr
    finally:
        track.send_signal(signal.SIGKILL)
        track.wait()
    meta = json.loads((session / "session.json").read_text())
    assert meta["complete"] is False and not (session / "trajectories").exists()
    result = toxrt("finish", str(session))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and str(session / "trajectories") in result.stdout
    assert_finished(session, frames_at_least=50)


KILLED_WHILE_WRITING = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from toxrt import finish, tracking
    from toxrt.config import load_config

    def stuck_writer(folder, *args, **kwargs):  # the first output is being written when the kill comes
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "trajectories.npy.tmp").write_bytes(b"half a file")
        print("writing outputs", flush=True)
        time.sleep(600)
    finish.write_trajectories = stuck_writer
    tracking.run_tracking(load_config(sys.argv[1]), progress=False)
""")


@pytest.mark.slow
def test_a_session_killed_while_writing_its_outputs_is_not_complete_and_finish_completes_it(tmp_path):
    params = arena_params(tmp_path, frames=120, realtime=False)
    session = tmp_path / "session_killed"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WHILE_WRITING, str(params)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert child.stdout.readline().strip() == "writing outputs", child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    meta = json.loads((session / "session.json").read_text())
    assert meta["recording_complete"] is True and meta["complete"] is False  # never complete without outputs
    assert [p.name for p in (session / "trajectories").iterdir()] == ["trajectories.npy.tmp"]
    result = toxrt("finish", str(session))
    assert result.returncode == 0, result.stderr
    assert_finished(session, frames_at_least=120)


def test_finish_errors_are_one_line(tmp_path):
    for folder in (tmp_path / "missing", tmp_path):
        result = toxrt("finish", str(folder))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("toxrt: error:")




FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    from toxrt.cli import main
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes beyond the limit fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_a_full_disk_ends_with_one_clean_line_and_no_traceback(tmp_path):
    params = arena_params(tmp_path, frames=300, realtime=False)
    # 1. the disk fills while recording (the identification images outgrow it first)
    # The file-size limit that stands for a full disk binds every file the process and its children
    # write, the learner process's caches and semaphores too, which a full data disk would not:
    # the live learner stays off here (its own tests are in test_live_appearance.py).
    no_learner = ["--appearance.live", "false"]
    result = subprocess.run([sys.executable, "-c", FULL_DISK, "200000", "track", "--load", str(params), "--quiet",
                             *no_learner], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("toxrt: error:")
    assert "File too large" in result.stderr.strip().splitlines()[-1]
    # 2. the recording fits (small chunks: real time at 50 fps) but the trajectories do not: the
    # session is not complete, and the error says what to do
    params = arena_params(tmp_path, frames=300, realtime=True)
    result = subprocess.run([sys.executable, "-c", FULL_DISK, "20000", "track", "--load", str(params), "--quiet",
                             "--overwrite", "--recording.identification_images", "false", *no_learner],
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "cannot write the trajectories" in result.stderr and "toxrt finish" in result.stderr
    session = tmp_path / "session_killed"
    assert json.loads((session / "session.json").read_text())["complete"] is False
    finished = toxrt("finish", str(session))
    assert finished.returncode == 0, finished.stderr
    assert json.loads((session / "session.json").read_text())["complete"] is True
