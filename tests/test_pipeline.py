"""End to end: simulated arenas through the live engine, from memory and from real video files."""
import subprocess
import sys

import numpy as np
import pytest

from toxrt.config import build_config, load_config
from toxrt.evaluation.groundtruth import GroundTruth
from toxrt.evaluation.metrics import evaluate, evaluate_session
from toxrt.io.trajectory_files import load_trajectories
from toxrt.tracking import run_tracking
from toxrt.io.session_reader import load_session
from toxrt.sim.arena import SimulatedArena
from toxrt.sim.writer import write_simulation
from toxrt.types import Status


# Publish and take markers on free ports, so that tests never collide with a running toxrt.
LOOPBACK_ANY_PORT = {"publish_address": "tcp://127.0.0.1:*", "marker_address": "tcp://127.0.0.1:*"}
NO_STREAMING = {"streaming.publish_address": "", "streaming.marker_address": ""}


def sim_config(tmp_path, animals=8, frames=300, **sim):
    values = {"name": "e2e", "video_paths": ["sim:e2e"], "number_of_animals": animals,
              "output_dir": str(tmp_path), "sim": {"frames": frames, "seed": 3, **sim}, "streaming": LOOPBACK_ANY_PORT}
    arena = SimulatedArena(build_config(values).sim, animals)
    return build_config({**values, **arena.tracking_parameters()}), arena


@pytest.mark.slow
def test_simulated_arena_identities_are_kept(tmp_path):
    config, arena = sim_config(tmp_path)
    summary = run_tracking(config, progress=False)
    truth = GroundTruth(frames=np.arange(arena.n_frames), ids=list(range(1, 9)),
                        positions=arena.positions, crossing=arena.crossing)
    predicted, data, _ = load_trajectories(summary["session"])
    report = evaluate(predicted, truth, arena.body_length_px)
    assert report.accuracy_solo >= 0.99
    assert report.accuracy_all >= 0.97
    assert data["trajectories"].shape == (300, 8, 2)
    # The session records what the live stage saw, and its fragments never mix crossings and animals.
    session = load_session(summary["session"])
    assert session.n_frames == 300
    assert set(np.unique(session.blobs["status"])) <= {Status.MEASURED, Status.CROSSING}
    assert any(e.get("type") == "identity" or "new_identity" in e for e in session.events)
    live = session.blobs[(session.blobs["identity"] > 0) & ~session.blobs["is_crossing"]]
    for frame in np.unique(live["frame"])[::10]:
        ids = live["identity"][live["frame"] == frame]
        assert len(ids) == len(set(ids.tolist())), "two blobs of one frame share a live identity"


@pytest.mark.slow
def test_light_animals_on_dark_ground(tmp_path):
    config, arena = sim_config(tmp_path, animals=4, frames=150, light_on_dark=True)
    summary = run_tracking(config, progress=False)
    truth = GroundTruth(frames=np.arange(arena.n_frames), ids=[1, 2, 3, 4],
                        positions=arena.positions, crossing=arena.crossing)
    report = evaluate(load_trajectories(summary["session"])[0], truth, arena.body_length_px)
    assert report.accuracy_solo >= 0.99


@pytest.mark.slow
def test_track_a_video_file_from_the_command_line(tmp_path):
    sim = build_config({"sim": {"frames": 200, "seed": 5, "width": 320, "height": 240, "body_length_px": 20}}).sim
    paths = write_simulation(tmp_path / "arena", sim, 4)
    result = subprocess.run([sys.executable, "-m", "toxrt", "track", "--load", str(paths["params"]), "--quiet",
                             "--trajectories_formats", '["npy", "csv", "h5"]',
                             "--streaming.publish_address", "", "--streaming.marker_address", ""],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    session = tmp_path / "arena" / "session_simulation"
    assert (session / "trajectories" / "trajectories.npy").exists()
    assert (session / "trajectories" / "trajectories.h5").exists()
    header = (session / "trajectories" / "trajectories_csv" / "trajectories.csv").read_text().splitlines()[0]
    assert header.startswith("time,x1,y1,x2,y2")
    report = evaluate_session(session, paths["csv"])
    assert report.accuracy_solo >= 0.98
    evaluate_cli = subprocess.run([sys.executable, "-m", "toxrt", "evaluate", str(session), str(paths["csv"])],
                                  capture_output=True, text=True, timeout=120)
    assert evaluate_cli.returncode == 0 and "accuracy solo" in evaluate_cli.stdout


@pytest.mark.slow
def test_video_that_breaks_off_keeps_what_was_tracked(tmp_path):
    sim = build_config({"sim": {"frames": 120, "seed": 2, "width": 240, "height": 180, "body_length_px": 20}}).sim
    paths = write_simulation(tmp_path / "arena", sim, 3)
    video = paths["video"]
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * 0.6)])
    config = load_config(paths["params"], {"output_dir": str(tmp_path / "out"), **NO_STREAMING})
    summary = run_tracking(config, progress=False)
    assert summary["stopped_early_at"] is not None and 0 < summary["stopped_early_at"] < 120
    trajectories = np.load(tmp_path / "out" / "session_simulation" / "trajectories" / "trajectories.npy",
                           allow_pickle=True).item()["trajectories"]
    assert trajectories.shape[0] == summary["stopped_early_at"]
    assert np.isfinite(trajectories[: summary["stopped_early_at"] - 5]).mean() > 0.9


@pytest.mark.slow
def test_frames_without_animals_are_normal(tmp_path):
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    arena = SimulatedArena(build_config({"sim": {"frames": 60, "width": 200, "height": 150, "body_length_px": 20,
                                                  "noise_sigma": 0}}).sim, 2)
    for index, image in arena.frames():
        if 20 <= index < 30:
            image = np.full_like(image, int(np.median(image)))  # nobody in view
        cv2.imwrite(str(folder / f"frame_{index + 1:06d}.png"), image)
    config = build_config({"video_paths": [str(folder / "frame_%06d.png")], "number_of_animals": 2,
                           "output_dir": str(tmp_path), "frames_per_second": 25, **arena.tracking_parameters(),
                           "streaming": LOOPBACK_ANY_PORT})
    summary = run_tracking(config, progress=False)
    assert summary["frames"] == 60 and summary["frame_errors"] == 0


def test_the_tracker_never_changes_the_blobs_it_is_given_and_reports_the_linkers_crossings(tmp_path):
    from toxrt.pipeline import LiveTracker, prepare
    from toxrt.sources.simulated import SimulatedSource
    from toxrt.types import BLOB_FIELDS, Frame

    config, arena = sim_config(tmp_path, animals=8, frames=250)
    setup = prepare(config, SimulatedSource(config))
    tracker = LiveTracker(config, setup, learn=False)
    detect = tracker.detector()  # as a file's reader thread runs it
    crossings = 0
    for index, image in arena.frames():
        frame = detect(Frame(index, index / arena.fps, image))
        before = {name: getattr(frame.blobs, name).copy() for name in BLOB_FIELDS}
        result = tracker.step(frame)
        assert result.blobs is frame.blobs
        assert all(np.array_equal(getattr(frame.blobs, name), before[name]) for name in BLOB_FIELDS)
        assert result.is_crossing.shape == (len(frame.blobs),)
        assert np.array_equal(result.status == Status.CROSSING, result.is_crossing)
        assert not result.identity[result.is_crossing].any()  # crossings carry no identity of their own
        crossings += int(result.is_crossing.sum())
    tracker.close()
    assert crossings > 0 and tracker.detected_ahead == arena.n_frames
