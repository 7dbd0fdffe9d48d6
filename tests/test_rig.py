"""Several cameras live at once: one `toxrt track` process per camera, real ZeroMQ sockets between
processes, a simulated camera and a video file replayed in real time."""
import csv
import io
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from toxrt.stream.client import MultiCameraClient
from toxrt.stream.listen import listen
from toxrt.config import build_config
from toxrt.errors import ConfigError
from toxrt.rig import cameras_from_specs, load_rig, plan_cameras, shifted
from toxrt.sim.arena import SimulatedArena
from toxrt.sim.writer import write_simulation

from .helpers import free_ports

ANIMALS = 3


def write_params(folder: Path, frames: int, wait_for_subscriber_s: float = 30.0) -> Path:
    """Parameters that track the 160x120 simulated arena; every camera waits for a subscriber."""
    sim = {"frames": frames, "width": 160, "height": 120, "seed": 1}
    suited = SimulatedArena(build_config({"number_of_animals": ANIMALS, "sim": sim}).sim, ANIMALS).tracking_parameters()
    area = suited["area_ths"]
    text = (f"number_of_animals = {ANIMALS}\nintensity_ths = {suited['intensity_ths']}\n"
            f"area_ths = [{area[0]}, inf]\nuse_bkg = {str(suited['use_bkg']).lower()}\n"
            f'output_dir = "sessions"\ntrajectories_formats = ["npy"]\n'
            f"[sim]\nframes = {frames}\nwidth = 160\nheight = 120\nseed = 1\n"
            f"[streaming]\nwait_for_subscriber_s = {wait_for_subscriber_s}\n")
    path = folder / "params.toml"
    path.write_text(text)
    return path


def camera_table(name: str, source: str, pub: int, marker: int) -> str:
    return (f'[[camera]]\nname = "{name}"\nsource = "{source}"\n'
            f'publish_address = "tcp://127.0.0.1:{pub}"\nmarker_address = "tcp://127.0.0.1:{marker}"\n')


@pytest.mark.slow
def test_a_rig_of_a_simulated_and_a_replayed_camera_publishes_both_to_one_subscriber(tmp_path):
    write_params(tmp_path, frames=5000)  # the simulated camera runs until the rig stops it
    write_simulation(tmp_path / "recorded", build_config(
        {"number_of_animals": ANIMALS, "sim": {"frames": 50, "width": 160, "height": 120, "seed": 2}}).sim,
        ANIMALS)  # the replayed camera's video
    ports = free_ports(6)
    (tmp_path / "rig.toml").write_text(
        'params = "params.toml"\n' + camera_table("left", "sim:left", *ports[0:2])
        + camera_table("right", "recorded/video.avi", *ports[2:4])
        + camera_table("broken", "missing.avi", *ports[4:6]))
    addresses = [f"tcp://127.0.0.1:{p}" for p in ports[0:4:2]]
    with MultiCameraClient(addresses) as client:  # subscribed before the cameras start
        # started as a background job of a script would be, with SIGINT ignored: Ctrl+C (or kill
        # -INT) must still stop it
        rig = subprocess.Popen([sys.executable, "-m", "toxrt", "rig", str(tmp_path / "rig.toml")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        shown: list[str] = []
        reader = threading.Thread(target=lambda: shown.extend(rig.stdout), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the rig shows the replay ended by itself; left runs on
                if (any(line.split()[:2] == ["right", "finished"] for line in list(shown))
                        and client.counts().get("left", {}).get("received", 0) >= 25):
                    break
                time.sleep(0.1)
            rig.send_signal(signal.SIGINT)  # Ctrl+C: the rig stops every camera once
            rig.wait(timeout=120)
            reader.join(timeout=10)
            stdout, stderr = "".join(shown), rig.stderr.read()
        finally:
            if rig.poll() is None:
                rig.kill()
        latest = client.latest()
        counts = client.counts()
        events = client.events()
    assert rig.returncode == 1, stderr  # the broken camera failed; the other two did not
    assert set(latest) == {"left", "right"}, latest.keys()
    assert all(1 <= identity <= ANIMALS for camera in latest.values() for identity in camera)
    assert counts["left"]["missed"] == 0 and counts["right"]["missed"] == 0
    assert {e["camera"] for e in events} == {"left", "right"}
    table = stdout.split("stopping every camera")[-1]
    assert "left" in table and "stopped" in table and "finished" in table, table
    assert "failed (2)" in table and "missing.avi: file not found" in table

    sessions = {json.loads(p.read_text())["camera"]: json.loads(p.read_text())
                for p in (tmp_path / "sessions").glob("session_*/session.json")}
    assert set(sessions) == {"left", "right"}
    assert sessions["left"]["summary"]["interrupted"] and not sessions["right"]["summary"]["interrupted"]
    assert sessions["right"]["summary"]["frames"] == counts["right"]["received"]  # every tracked frame arrived
    assert all(s["complete"] for s in sessions.values())
    assert len(list((tmp_path / "sessions").glob("session_*.log"))) == 3


@pytest.mark.slow
def test_track_with_two_cameras_runs_a_process_each_and_listen_receives_both(tmp_path):
    params = write_params(tmp_path, frames=40)
    pub0, marker0 = free_ports(2)
    result: dict = {}
    csv_path = tmp_path / "both.csv"
    addresses = [f"tcp://127.0.0.1:{pub0}", f"tcp://127.0.0.1:{pub0 + 2}"]
    # The cameras replay in real time, so a loaded machine may drop frames: the listener then waits
    # out its duration instead of stopping at 80, and what it must have is what the cameras tracked.
    listener = threading.Thread(target=lambda: result.update(counts=listen(
        addresses, csv_path=str(csv_path), max_frames=80, duration_s=90, out=io.StringIO())))
    listener.start()
    track = subprocess.run(
        [sys.executable, "-m", "toxrt", "track", "--load", str(params), "--cameras", "a=sim:a", "b=sim:b",
         "--streaming.publish_address", f"tcp://127.0.0.1:{pub0}",
         "--streaming.marker_address", f"tcp://127.0.0.1:{marker0}"],
        capture_output=True, text=True, timeout=180)
    listener.join(timeout=120)
    assert track.returncode == 0, track.stdout + track.stderr
    tracked = {json.loads(p.read_text())["camera"]: json.loads(p.read_text())["summary"]
               for p in (tmp_path / "sessions").glob("session_*/session.json")}
    assert set(tracked) == {"a", "b"}
    assert all(s["frames"] + s["frames_dropped"] == 40 for s in tracked.values())
    assert result["counts"]["frames"] == sum(s["frames"] for s in tracked.values())
    assert result["counts"]["missed"] == 0
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    for camera in ("a", "b"):
        frames = sorted({int(r["frame"]) for r in rows if r["camera"] == camera})
        assert len(frames) == tracked[camera]["frames"] and set(frames) <= set(range(40))


def test_camera_ports_and_names(tmp_path):
    params = write_params(tmp_path, frames=10)
    plans = plan_cameras(cameras_from_specs(str(params), ["sim:x", "b=camera:1", "rtsp://host/s"]), stamp="T")
    assert [p.camera.name for p in plans] == ["cam0", "b", "cam2"]
    assert [p.publish_address for p in plans] == ["tcp://127.0.0.1:5556", "tcp://127.0.0.1:5558",
                                                  "tcp://127.0.0.1:5560"]
    assert plans[1].session == tmp_path / "sessions" / "session_b_T"
    command = plans[1].command
    assert command[command.index("--streaming.marker_address") + 1] == '"tcp://127.0.0.1:5559"'
    assert command[command.index("--video_paths") + 1] == '["camera:1"]'
    assert shifted("ipc:///tmp/toxrt", 2, "left") == "ipc:///tmp/toxrt-left"
    assert shifted("", 2, "left") == ""


@pytest.mark.parametrize("text, message", [
    ('params = "p.toml"\n', "no [[camera]] table"),
    ('params = "p.toml"\ncolour = 1\n[[camera]]\nsource = "sim:a"\n', "unknown key 'colour'"),
    ('params = "p.toml"\n[[camera]]\nname = "a"\n', "'source' is missing"),
    ('params = "p.toml"\n[[camera]]\nsource = 3\n', "camera[0].source: expected a string"),
    ('[[camera]]\nsource = "sim:a"\n', "no parameter file"),
    ('params = "p.toml"\n[[camera]]\nsource = "sim:a"\nfps = "x"\n', "unknown key 'fps'"),
])
def test_rig_file_mistakes_are_named(tmp_path, text, message):
    path = tmp_path / "rig.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_rig(path)


def test_two_cameras_cannot_share_a_name_or_an_address(tmp_path):
    params = write_params(tmp_path, frames=10)
    (tmp_path / "rig.toml").write_text('params = "params.toml"\n[[camera]]\nname = "a"\nsource = "sim:a"\n'
                                       '[[camera]]\nname = "a"\nsource = "sim:b"\n')
    with pytest.raises(ConfigError, match="distinct name"):
        plan_cameras(*load_rig(tmp_path / "rig.toml"))
    (tmp_path / "rig.toml").write_text('params = "params.toml"\n[[camera]]\nname = "a"\nsource = "sim:a"\n'
                                       'publish_address = "tcp://127.0.0.1:5558"\n'
                                       '[[camera]]\nname = "b"\nsource = "sim:b"\n')
    with pytest.raises(ConfigError, match="cameras a and b: both use tcp://127.0.0.1:5558"):
        plan_cameras(*load_rig(tmp_path / "rig.toml"))
    assert params.exists()


def test_rig_command_with_a_missing_file_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "toxrt", "rig", str(tmp_path / "nope.toml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"toxrt: error: {tmp_path / 'nope.toml'}: rig file not found"


def frame_arrays(xs: list[float]) -> dict:
    import numpy as np

    n = len(xs)
    return {"ids": np.arange(1, n + 1, dtype=np.int32), "x": np.array(xs, float), "y": np.full(n, 5.0),
            "heading": np.zeros(n), "area": np.full(n, 100.0), "status": np.zeros(n, np.uint8),
            "p": np.full(n, 0.9, np.float32)}


def test_a_multi_camera_client_keeps_each_camera_apart():
    from toxrt.stream.publish import Publisher
    from toxrt.stream.wire import decode, encode

    assert decode(encode({"v": 1}, "json", camera="left"))["camera"] == "left"
    assert "camera" not in decode(encode({"v": 1}, "msgpack"))
    with Publisher("tcp://127.0.0.1:*", camera="left") as left, \
            Publisher("tcp://127.0.0.1:*", fmt="json") as unnamed, \
            MultiCameraClient([left.address, unnamed.address]) as client:
        assert left.wait_for_subscriber(b"pos") and unnamed.wait_for_subscriber(b"pos")
        left.publish_positions(0, 0.0, **frame_arrays([10.0, 20.0]))
        unnamed.publish_positions(0, 0.0, **frame_arrays([30.0]))
        unnamed.seq += 2  # two messages of this camera lost on the way; left's seq is its own
        unnamed.publish_positions(3, 0.0, **frame_arrays([31.0]))
        left.publish_positions(1, 0.0, **frame_arrays([11.0, 21.0]))
        left.publish_event({"type": "fragment_start", "fragment": 1, "frame": 1})
        assert client.wait_for_frames(timeout_s=10)
        deadline = time.monotonic() + 10
        while (client.last_frames()[unnamed.address] or {}).get("frame") != 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        while (client.last_frames()["left"] or {}).get("frame") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        latest = client.latest()
        assert set(latest) == {"left", unnamed.address}  # an unnamed publisher goes by its address
        assert {i: a.x for i, a in latest["left"].items()} == {1: 11.0, 2: 21.0}
        assert {i: a.x for i, a in latest[unnamed.address].items()} == {1: 31.0}
        counts = client.counts()
        assert counts["left"]["missed"] == 0 and counts[unnamed.address]["missed"] == 2
        assert client.cameras() == {"left": left.address, unnamed.address: unnamed.address}
        while not (events := client.events()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [(e["type"], e["camera"]) for e in events] == [("fragment_start", "left")]
