"""Session writer and loader: round trip, never dropping, kill -9 survival, errors."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from toxrt.config import RecordingConfig
from toxrt.errors import SessionError
from toxrt.io.recording import SessionWriter
from toxrt.io.session_reader import load_session
from toxrt.types import BLOB_RECORD_DTYPE, Blobs, FrameResult, IdentityEvent, Status, blob_records

BINS = 16
CROP = 12
N_FRAMES = 300
CROSS = range(100, 105)  # animals 0 and 1 share one crossing blob in these frames

# Fragment ids by hand: animals 0 and 1 get new fragments after the crossing; animal 2 has one.
# (fragment, start, end, n_samples, is_crossing, identity at its end)
EXPECTED_FRAGMENTS = [
    (1, 0, 99, 100, False, 1),
    (2, 0, 99, 100, False, 2),
    (3, 100, 104, 5, True, 0),
    (4, 105, 299, 195, False, 1),
    (5, 105, 299, 195, False, 2),
    (7, 0, 299, 300, False, 3),
]


def _fragment_of(animal: int, frame: int) -> int:
    if animal == 2:
        return 7
    return animal + 1 if frame < CROSS.start else animal + 4


def make_result(frame: int) -> FrameResult:
    """A deterministic frame: 3 animals, or 1 animal + 1 crossing blob in CROSS frames."""
    rng = np.random.default_rng(frame)
    if frame in CROSS:
        fragment = np.array([3, 7])
        crossing = np.array([True, False])
        centroid = np.array([[200.0 + frame, 100.0], [50.0, 60.0 + frame * 0.1]])
    else:
        fragment = np.array([_fragment_of(k, frame) for k in range(3)])
        crossing = np.zeros(3, bool)
        centroid = np.array([[190.0 + frame, 95.0], [210.0 + frame, 105.0], [50.0, 60.0 + frame * 0.1]])
    n = len(fragment)
    starts = {1: 0, 2: 0, 4: 105, 5: 105, 7: 0}
    decided = np.array([f in starts and frame - starts[f] >= 5 for f in fragment])
    identity = np.where(decided, np.array([{1: 1, 2: 2, 4: 1, 5: 2, 7: 3}.get(f, 0) for f in fragment]), 0)
    histogram = rng.random((n, BINS)).astype(np.float32)
    histogram /= histogram.sum(axis=1, keepdims=True)
    blobs = Blobs(
        centroid=centroid,
        area=np.where(crossing, 300.0, 150.0) + rng.random(n),
        orientation=rng.uniform(-1.5, 1.5, n),
        bbox=rng.integers(0, 500, (n, 4)).astype(np.int32),
        hu=rng.normal(size=(n, 7)),
        histogram=histogram,
        crop=rng.integers(0, 256, (n, CROP, CROP), dtype=np.uint8),
        oversized=crossing,
    )
    events = [IdentityEvent(frame, int(f), 0, int(i), 0.9) for f, i in zip(fragment, identity)
              if f in starts and frame - starts[f] == 5]
    return FrameResult(
        frame_index=frame,
        time_s=frame / 25.0,
        blobs=blobs,
        fragment=fragment.astype(np.int64),
        is_crossing=crossing,
        identity=identity.astype(np.int32),
        probability=np.where(identity > 0, 0.9, 0.0).astype(np.float32),
        status=np.where(crossing, Status.CROSSING, Status.MEASURED).astype(np.uint8),
        events=events,
    )


def open_writer(folder: Path, cfg: RecordingConfig | None = None, background: np.ndarray | None = None,
                **kwargs) -> SessionWriter:
    cfg = cfg or RecordingConfig(flush_interval_s=0.05, queue_frames=8)
    meta = {"video_paths": ["sim:arena"], "width": 640, "height": 480, "frames_per_second": 25.0,
            "number_of_animals": 3, "body_length_px": 28.0}
    return SessionWriter(folder, cfg, meta, 'name = "test"\nnumber_of_animals = 3\n', background,
                         identification_image_size=CROP, histogram_bins=BINS, **kwargs)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Path, SessionWriter, list[FrameResult]]:
    folder = tmp_path_factory.mktemp("rec") / "session_test"
    background = np.arange(480 * 640, dtype=np.float32).reshape(480, 640) % 256
    results = [make_result(f) for f in range(N_FRAMES)]
    with open_writer(folder, background=background) as writer:
        for result in results:
            writer.write_frame(result)
            writer.write_events(result.events)  # IdentityEvents are accepted as they are
        writer.write_events([{"type": "source", "frame": 0, "what": "opened"}])
        writer.update_meta(frames_tracked=N_FRAMES, stop_frame=N_FRAMES - 1)
    return folder, writer, results


def test_round_trip_rows_features_crops(recorded):
    folder, writer, results = recorded
    session = load_session(folder)
    expected = np.concatenate([blob_records(r) for r in results])
    assert session.n_frames == N_FRAMES
    assert session.blobs.dtype == BLOB_RECORD_DTYPE
    np.testing.assert_array_equal(session.blobs, expected)
    histograms = np.concatenate([r.blobs.histogram for r in results])
    assert session.histograms().dtype == np.float32
    np.testing.assert_allclose(session.histograms(), histograms, atol=1e-3)  # stored as float16
    np.testing.assert_array_equal(session.hu(), np.concatenate([r.blobs.hu for r in results]))
    crops = np.concatenate([r.blobs.crop for r in results])
    assert session.has_crop.all()
    pick = np.array([0, 5, 317, len(crops) - 1])
    np.testing.assert_array_equal(session.crops(pick), crops[pick])
    assert session.crops(np.zeros(0, int)).shape == (0, CROP, CROP)


def test_round_trip_meta_parameters_background_events(recorded):
    folder, writer, results = recorded
    session = load_session(folder)
    assert session.meta["format"] == "toxrt-session-1"
    assert session.meta["recording_complete"] is True
    assert session.meta["complete"] is False  # set only once the trajectories are written
    assert session.meta["frames_tracked"] == N_FRAMES and session.meta["stop_frame"] == N_FRAMES - 1
    assert session.meta["number_of_animals"] == 3 and session.meta["n_frames"] == N_FRAMES
    assert session.parameters == {"name": "test", "number_of_animals": 3}
    assert session.background.shape == (480, 640) and session.background.dtype == np.uint8
    assert session.background[0, 300] == 300 % 256
    identity_events = [e for e in session.events if e["type"] == "identity"]
    expected = [e for r in results for e in r.events]
    assert [(e["frame"], e["fragment"], e["new_identity"]) for e in identity_events] == \
        [(e.frame, e.fragment, e.new_identity) for e in expected]
    assert {"type": "source", "frame": 0, "what": "opened"} in session.events


def test_writer_never_drops(recorded):
    folder, writer, results = recorded
    stats = writer.stats
    assert stats.dropped == 0
    assert stats.frames_queued == stats.frames_written == N_FRAMES
    assert stats.rows_written == sum(len(r.blobs) for r in results)
    assert 1 <= stats.max_queue_depth <= 8
    assert stats.chunks_written >= 1
    writer.close()  # idempotent
    with pytest.raises(SessionError, match="closed"):
        writer.write_frame(results[0])


def test_fragments_and_coexistence(recorded):
    session = load_session(recorded[0])
    got = [tuple(x.item() for x in row) for row in session.fragments]
    assert got == EXPECTED_FRAGMENTS
    ids = session.fragments["fragment"]
    pairs = {tuple(p) for p in ids[session.coexisting()]}
    assert pairs == {(1, 2), (1, 7), (2, 7), (3, 7), (4, 5), (4, 7), (5, 7)}
    pairs = {tuple(p) for p in ids[session.coexisting(include_crossing=False)]}
    assert pairs == {(1, 2), (1, 7), (2, 7), (4, 5), (4, 7), (5, 7)}


def test_fragment_samples(recorded):
    session = load_session(recorded[0])
    samples = session.fragment_samples(10, np.random.default_rng(0))
    assert sorted(samples) == [1, 2, 4, 5, 7]  # no crossing fragment
    hist, hu = samples[1]
    assert hist.shape == (10, BINS) and hu.shape == (10, 7)
    rows = np.flatnonzero(session.blobs["fragment"] == 1)
    # every sample is one of fragment 1's rows, without repetition
    matches = [np.flatnonzero((session.hu()[rows] == h).all(axis=1)) for h in hu]
    assert all(len(m) == 1 for m in matches) and len({int(m[0]) for m in matches}) == 10
    assert samples[4][0].shape[0] == 10 and len(session.fragment_samples(500, np.random.default_rng(0))[7][1]) == 300


def test_without_images_and_empty_frames(tmp_path):
    cfg = RecordingConfig(identification_images=False, flush_interval_s=0.05, queue_frames=100)
    with open_writer(tmp_path / "s", cfg) as writer:
        writer.write_frame(make_result(0))
        empty = FrameResult(1, 0.04, Blobs.empty(BINS, CROP), np.zeros(0, np.int64), np.zeros(0, bool),
                            np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.uint8))
        writer.write_frame(empty)
    session = load_session(tmp_path / "s")
    assert session.n_frames == 2 and len(session.blobs) == 3
    assert session.background is None and not session.has_crop.any()
    with pytest.raises(SessionError, match="no identification image"):
        session.crops(np.array([0]))


def test_existing_session_is_not_overwritten_by_default(tmp_path):
    open_writer(tmp_path / "s").close()
    with pytest.raises(SessionError, match="already holds"):
        open_writer(tmp_path / "s")
    with open_writer(tmp_path / "s", overwrite=True) as writer:
        writer.write_frame(make_result(0))
    assert load_session(tmp_path / "s").n_frames == 1


def _wait_flushed(writer: SessionWriter, frames: int) -> None:
    while writer.stats.frames_written < frames:
        time.sleep(0.01)


def test_tolerates_truncated_tail(tmp_path):
    folder = tmp_path / "s"
    with open_writer(folder) as writer:
        for f in range(60):
            writer.write_frame(make_result(f))
            if f == 29:
                _wait_flushed(writer, 30)  # so that the session has at least two chunks
    chunks = sorted((folder / "blobs").glob("chunk_*.npz"))
    complete = load_session(folder)
    # a crash leaves: a half-written temp chunk, a damaged last chunk, short crops, a cut event line
    (folder / "blobs" / "chunk_999998.npz.tmp").write_bytes(b"PK\x03\x04partial")
    last = chunks[-1].read_bytes()
    chunks[-1].write_bytes(last[: len(last) // 2])
    crops = folder / "identification_images.u8"
    os.truncate(crops, crops.stat().st_size - CROP * CROP * 2 - 5)
    with open(folder / "events.jsonl", "ab") as handle:
        handle.write('{"type": "marker", "label": "café'.encode()[:-1])  # cut inside a UTF-8 character
    session = load_session(folder)
    kept = len(session.blobs)
    assert 0 < kept < len(complete.blobs)
    np.testing.assert_array_equal(session.blobs, complete.blobs[:kept])
    assert session.events == complete.events
    assert session.has_crop.all()  # the rows of the dropped chunk held the lost images
    assert len(session.hu()) == kept


def test_short_crop_file_marks_rows_unavailable(tmp_path):
    folder = tmp_path / "s"
    with open_writer(folder) as writer:
        for f in range(10):
            writer.write_frame(make_result(f))
    crops = folder / "identification_images.u8"
    os.truncate(crops, crops.stat().st_size - CROP * CROP * 2)
    session = load_session(folder)
    assert session.has_crop.sum() == len(session.blobs) - 2 and not session.has_crop[-2:].any()
    assert session.crops(np.array([0, 1])).shape == (2, CROP, CROP)
    with pytest.raises(SessionError, match="no identification image for row"):
        session.crops(np.array([len(session.blobs) - 1]))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_load_errors(tmp_path):
    with pytest.raises(SessionError) as exc:
        load_session(tmp_path / "nowhere")
    assert "not a session folder" in _one_line(exc)
    with pytest.raises(SessionError) as exc:
        load_session(tmp_path)
    assert "missing session.json" in _one_line(exc)
    folder = tmp_path / "s"
    open_writer(folder).close()
    meta = json.loads((folder / "session.json").read_text())
    (folder / "session.json").write_text(json.dumps({**meta, "format": "toxrt-session-9"}))
    with pytest.raises(SessionError) as exc:
        load_session(folder)
    assert "unknown format version 'toxrt-session-9'" in _one_line(exc)
    (folder / "session.json").write_text("{not json")
    with pytest.raises(SessionError) as exc:
        load_session(folder)
    assert "session.json" in _one_line(exc)
    (folder / "session.json").write_text(json.dumps(meta))
    (folder / "parameters.toml").unlink()
    with pytest.raises(SessionError) as exc:
        load_session(folder)
    assert "missing file parameters.toml" in _one_line(exc)


def test_bad_input_fails_in_the_caller(tmp_path):
    with open_writer(tmp_path / "s") as writer:
        result = make_result(0)
        result.blobs.crop = np.zeros((3, CROP + 1, CROP + 1), np.uint8)
        with pytest.raises(SessionError, match="identification_image_size"):
            writer.write_frame(result)
        result = make_result(1)
        result.blobs.histogram = np.zeros((3, BINS + 1), np.float32)
        with pytest.raises(SessionError, match="histogram_bins"):
            writer.write_frame(result)
        with pytest.raises(SessionError, match="cannot be written as JSON"):
            writer.write_events([{"type": "x", "what": object()}])
        with pytest.raises(SessionError, match="cannot be written as JSON"):
            writer.update_meta(bad={1, 2})
        writer.write_events([{"type": "x", "n": np.int64(3), "p": np.float32(0.5)}])
    assert load_session(tmp_path / "s").events == [{"type": "x", "n": 3, "p": 0.5}]


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_recording import make_result, open_writer
    from toxrt.config import RecordingConfig
    writer = open_writer(Path({folder!r}), RecordingConfig(flush_interval_s=0.2, queue_frames=50))
    for frame in range(100000):
        writer.write_frame(make_result(frame))
        if frame % 10 == 0:
            print(frame, writer.stats.frames_written, flush=True)
        time.sleep(0.005)
""")


def test_kill_minus_nine_leaves_a_loadable_session(tmp_path):
    """The writer flushes on its timer: frames it reported flushed survive a SIGKILL."""
    folder = tmp_path / "session_killed"
    script = CHILD.format(tests=str(Path(__file__).parent), folder=str(folder))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    flushed = queued = 0
    try:
        for line in child.stdout:
            queued, flushed = map(int, line.split())
            if flushed >= 200:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert flushed >= 200, "the child writer never flushed 200 frames"
    session = load_session(folder)
    assert flushed <= session.n_frames <= queued + 10
    assert session.meta["complete"] is False and "recording_complete" not in session.meta
    expected = np.concatenate([blob_records(make_result(f)) for f in range(session.n_frames)])
    np.testing.assert_array_equal(session.blobs, expected)
    assert session.has_crop.all()
    assert len(session.histograms()) == len(session.blobs)


def test_writer_failure_reaches_the_caller(tmp_path):
    writer = open_writer(tmp_path / "s")
    shutil.rmtree(tmp_path / "s")  # the next chunk cannot be written
    with pytest.raises(SessionError, match="session writer failed"):
        for frame in range(100000):  # ends as soon as the writer thread has failed
            writer.write_frame(make_result(frame))
            time.sleep(0.002)
    with pytest.raises(SessionError, match="session writer failed"):
        writer.close()
    writer.close()  # idempotent after a failure too


def test_unclosed_writer_is_closed_at_exit(tmp_path):
    folder = tmp_path / "s"
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_recording import make_result, open_writer
        from toxrt.config import RecordingConfig
        writer = open_writer(Path({str(folder)!r}), RecordingConfig(flush_interval_s=1.0))
        for frame in range(50):
            writer.write_frame(make_result(frame))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
    session = load_session(folder)
    assert session.n_frames == 50 and session.meta["recording_complete"] is True


# ---------------------------------------------------------------------------------------------
# Slow storage: the flush lag is measured and reported
# ---------------------------------------------------------------------------------------------

class SlowDiskClock:
    """Monotonic time plus what the injected slow disk added: each chunk write "takes" write_s."""

    def __init__(self, write_s: float):
        self.write_s = write_s
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class SlowDiskWriter(SessionWriter):
    """A SessionWriter on a disk that needs ``clock.write_s`` per chunk (on the injected clock)."""

    def _write_chunk(self, frames):
        super()._write_chunk(frames)
        self._clock.offset += self._clock.write_s


def test_a_slow_disk_is_measured_warned_and_loses_nothing_on_close(tmp_path, caplog):
    clock = SlowDiskClock(write_s=1.5)
    meta = {"frames_per_second": 25.0, "number_of_animals": 3}
    with caplog.at_level("WARNING", logger="toxrt.io.recording"):
        with SlowDiskWriter(tmp_path / "s", RecordingConfig(flush_interval_s=0.1, queue_frames=8), meta, "",
                            None, CROP, BINS, clock=clock) as writer:
            for frame in range(60):
                writer.write_frame(make_result(frame))
    # The first chunk was due 0.1 s after its first frame and reached the disk 1.5 s later.
    assert writer.stats.max_flush_lag_s >= 1.5 - 0.1
    assert writer.stats.slow_flushes >= 1
    warnings = [r.getMessage() for r in caplog.records if "slow disk" in r.getMessage()]
    assert 1 <= len(warnings) <= 4 and "would lose up to" in warnings[0]  # rate-limited
    session = load_session(tmp_path / "s")
    assert session.n_frames == 60 and session.meta["recording_complete"]


SLOW_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_recording import make_result, open_writer
    from toxrt.config import RecordingConfig
    from toxrt.io import recording

    real_write_chunk = recording.SessionWriter._write_chunk
    def slow_write_chunk(self, frames):  # a network share: every chunk takes {write_s} s
        time.sleep({write_s})
        real_write_chunk(self, frames)
    recording.SessionWriter._write_chunk = slow_write_chunk

    writer = open_writer(Path({folder!r}), RecordingConfig(flush_interval_s={interval}, queue_frames=4000))
    for frame in range(100000):
        writer.write_frame(make_result(frame))
        print(frame + 1, writer.stats.frames_written, writer.stats.max_flush_lag_s, flush=True)
        time.sleep(1 / {fps})
""")


@pytest.mark.slow
def test_kill_minus_nine_on_a_slow_disk_keeps_every_flushed_frame_and_reports_the_lag(tmp_path):
    """kill -9 while every chunk write takes 0.6 s: the session loads, every frame the writer had
    reported flushed is there, and the writer had measured a flush lag beyond flush_interval_s."""
    folder = tmp_path / "session_slow"
    interval, write_s, fps = 0.2, 0.6, 50
    script = SLOW_CHILD.format(tests=str(Path(__file__).parent), folder=str(folder), interval=interval,
                               write_s=write_s, fps=fps)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    queued = flushed = 0
    lag = 0.0
    try:
        for line in child.stdout:
            queued, flushed, lag = int(line.split()[0]), int(line.split()[1]), float(line.split()[2])
            if flushed >= 100 and lag > interval:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    stderr = child.stderr.read()
    assert flushed >= 100 and lag > interval, stderr
    assert "slow disk" in stderr  # the child warned while it ran
    session = load_session(folder)
    assert flushed <= session.n_frames <= queued
    assert session.meta["complete"] is False
    # What queued during a slow write goes out in the next chunk, not one frame per chunk.
    assert session.n_frames >= 3 * len(list((folder / "blobs").glob("chunk_*.npz")))
    expected = np.concatenate([blob_records(make_result(f)) for f in range(session.n_frames)])
    np.testing.assert_array_equal(session.blobs, expected)
    assert session.has_crop.all()


# ---------------------------------------------------------------------------------------------
# One process per session folder
# ---------------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_recording import make_result, open_writer
    writer = open_writer(Path({folder!r}))
    writer.write_frame(make_result(0))
    print("recording", flush=True)
    sys.stdin.read()
""")


def test_a_session_recorded_by_a_live_process_is_not_overwritten_and_a_dead_ones_lock_is_taken_over(tmp_path):
    folder = tmp_path / "session_busy"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(tests=str(Path(__file__).parent), folder=str(folder))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "recording"
        assert (folder / "toxrt.lock").read_text().split()[0] == str(holder.pid)
        with pytest.raises(SessionError, match=f"being recorded or finished by process {holder.pid}"):
            open_writer(folder, overwrite=True)
        assert (folder / "session.json").exists()  # nothing was removed
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without releasing: its lock file is stale and is taken over.
    assert (folder / "toxrt.lock").exists()
    with open_writer(folder, overwrite=True) as writer:
        assert (folder / "toxrt.lock").read_text().split()[0] == str(os.getpid())
        writer.write_frame(make_result(0))
    assert not (folder / "toxrt.lock").exists()


def test_a_parameter_file_that_is_not_utf8_is_one_line(tmp_path):
    with open_writer(tmp_path / "s") as writer:
        writer.write_frame(make_result(0))
    (tmp_path / "s" / "parameters.toml").write_bytes(b'name = "\xff"\n')
    with pytest.raises(SessionError, match="parameters.toml: not UTF-8"):
        load_session(tmp_path / "s")


def test_without_flock_the_pid_in_the_lock_file_decides(tmp_path, monkeypatch):
    """On a filesystem that cannot lock files (some network shares) the PID alone decides."""
    import errno

    from toxrt.io import session_lock

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(session_lock.fcntl, "flock", no_flock)
    folder = tmp_path / "s"
    folder.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / "toxrt.lock").write_text(f"{alive.pid} {session_lock.socket.gethostname()}\n")
        with pytest.raises(SessionError, match=f"process {alive.pid}"):
            session_lock.SessionLock(folder)
    finally:
        alive.kill()
        alive.wait()
    with session_lock.SessionLock(folder):  # the same PID, now dead: taken over
        assert (folder / "toxrt.lock").read_text().split()[0] == str(os.getpid())


def test_an_atomic_write_that_fails_leaves_the_old_file_whole(tmp_path):
    from toxrt.io.atomic import atomic_open, temporary_path, write_text_atomic

    path = tmp_path / "summary.json"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as handle:
            handle.write("half of the new")
            raise RuntimeError("the disk is full")
    assert path.read_text() == "old" and temporary_path(path).exists()  # toxrt finish removes the rest
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
