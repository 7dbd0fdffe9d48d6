"""idtracker.ai 6.0.14's own tools on a toxrt session: its loader, idtrackerai_format and idtrackerai_video.

They run in subprocesses: importing idtrackerai switches multiprocessing to "forkserver" for the
whole process, and its command-line tools are what users run.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from toxrt.io.session_reader import load_session

pytestmark = pytest.mark.skipif(importlib.util.find_spec("idtrackerai") is None,
                                reason="idtrackerai 6.0.14 is not installed (make .venv/.full installs it)")

BIN = Path(sys.executable).parent
ENV = {**os.environ, "IDTRACKERAI_DISABLE_ANALYTICS": "1", "QT_QPA_PLATFORM": "offscreen"}

# Prints, as JSON, what idtracker.ai's loader makes of a session and of one trajectory file.
LOADER = """
import json, sys
import numpy as np
from idtrackerai import Session
from idtrackerai.utils import load_trajectories
session = Session.load(sys.argv[1])
data = load_trajectories(sys.argv[2])
out = {"session": {k: getattr(session, k) for k in ("number_of_frames", "median_body_length", "n_animals",
                                                    "identities_groups", "length_unit", "width", "height")},
       "session_folder": str(session.session_folder), "trajectories_folder": str(session.trajectories_folder),
       "keys": sorted(data)}
for key in ("trajectories", "id_probabilities"):
    out[key] = np.asarray(data[key], float).reshape(len(data[key]), -1).tolist()
areas = data.get("areas")
out["areas"] = {k: np.asarray(v, float).tolist() for k, v in areas.items()} if isinstance(areas, dict) else None
out["length_unit"] = None if data.get("length_unit") is None else float(data["length_unit"])
print(json.dumps(out))
"""


def run(args, cwd, timeout=300):
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ERROR" not in output and "CRITICAL" not in output, output
    return result.stdout


def idtrackerai_load(session: Path, trajectories: Path, cwd: Path) -> dict:
    return json.loads(run([sys.executable, "-c", LOADER, str(session), str(trajectories)], cwd).splitlines()[-1])


@pytest.fixture()
def session(video_session, tmp_path):
    target = tmp_path / "session_simulation"
    shutil.copytree(video_session["session"], target)
    session_json = json.loads((target / "session.json").read_text())
    session_json["session_folder"] = str(target.resolve())  # as if tracked here (no rewrite by idtracker.ai)
    (target / "session.json").write_text(json.dumps(session_json))
    return target


def nan_equal(a, b, atol=0.0) -> bool:
    """Equal arrays with NaN in the same places; the csv files keep 3 decimals (atol=1e-3)."""
    return np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=0.0, atol=atol, equal_nan=True)


def test_idtrackerai_is_the_version_we_read_and_needs_no_torch():
    from importlib import metadata

    assert metadata.version("idtrackerai") == "6.0.14"
    assert not [r for r in metadata.requires("idtrackerai") if r.split()[0].lower().startswith("torch")]


def test_idtrackerai_loader_reads_every_format_and_the_session(session, video_session, tmp_path):
    ours = np.load(session / "trajectories" / "trajectories.npy", allow_pickle=True).item()
    n_frames, n = ours["trajectories"].shape[:2]
    folder = session / "trajectories"
    for path in (folder / "trajectories.npy", folder / "trajectories.h5", folder / "trajectories_csv"):
        loaded = idtrackerai_load(session, path, tmp_path)
        assert loaded["session"] == {"number_of_frames": n_frames, "median_body_length": ours["body_length"],
                                     "n_animals": n, "identities_groups": {}, "length_unit": None,
                                     "width": 320, "height": 240}
        assert loaded["session_folder"] == str(session.resolve())
        atol = 1e-3 if path.name.endswith("_csv") else 0.0
        assert nan_equal(loaded["trajectories"], ours["trajectories"].reshape(n_frames, -1), atol), path
        assert nan_equal(loaded["id_probabilities"], ours["id_probabilities"].reshape(n_frames, -1), 1e-4), path
        assert loaded["length_unit"] == 8.0  # the calibration: pixels per cm (Session's comes from its validator)
        if path.suffix != "":  # idtracker.ai's csv reader drops areas.csv's first column (its own bug)
            assert nan_equal(loaded["areas"]["mean"], ours["areas"]["mean"])
    crossing = ours["status"] == 2
    assert crossing.any() and np.isnan(ours["id_probabilities"][crossing]).all()
    missing = np.isnan(ours["trajectories"][..., 0])
    assert (ours["id_probabilities"][missing] == 0).all()


@pytest.mark.slow
def test_idtrackerai_format_converts_every_format_without_losing_data(session, tmp_path):
    ours = np.load(session / "trajectories" / "trajectories.npy", allow_pickle=True).item()
    h5_size = (session / "trajectories" / "trajectories.h5").stat().st_size
    formats = ["h5", "npy", "csv", "csv_tidy", "pickle", "parquet"]
    run([str(BIN / "idtrackerai_format"), str(session), "--formats", *formats], tmp_path)
    folder = session / "trajectories"
    assert (folder / "trajectories.h5").stat().st_size >= 0.9 * h5_size  # not emptied
    for name in ("trajectories.h5", "trajectories.npy", "trajectories_csv", "trajectories_tidy.csv",
                 "trajectories.pickle", "trajectories.parquet"):
        loaded = idtrackerai_load(session, folder / name, tmp_path)
        atol = 1e-3 if "csv" in name else 0.0
        assert nan_equal(loaded["trajectories"], ours["trajectories"].reshape(len(ours["trajectories"]), -1),
                         atol), name
    # our own reader still opens the session after idtracker.ai rewrote its trajectory files
    assert load_session(session).n_frames == len(ours["trajectories"])


def test_idtrackerai_video_draws_a_toxrt_session(session, tmp_path):
    run([str(BIN / "idtrackerai_video"), str(session), "--run"], tmp_path)
    video = session / "video_tracked.avi"
    capture = cv2.VideoCapture(str(video))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, image = capture.read()
    capture.release()
    assert ok and image.shape == (240, 320, 3)
    assert frames == 149  # idtracker.ai draws frames 0 .. n_frames - 2


def test_a_moved_session_is_rewritten_by_idtrackerai_and_still_loads(video_session, tmp_path):
    moved = tmp_path / "elsewhere" / "session_simulation"
    shutil.copytree(video_session["session"], moved)
    loaded = idtrackerai_load(moved, moved / "trajectories" / "trajectories.npy", tmp_path)
    assert loaded["session_folder"] == str(moved.resolve())
    rewritten = json.loads((moved / "session.json").read_text())
    assert rewritten["session_folder"] == str(moved.resolve())  # idtracker.ai saved its own session.json
    assert load_session(moved).n_frames == 150
