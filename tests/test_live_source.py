"""Live sources: real-time replay, newest-frame-wins, reconnection, and a real UDP stream."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from toxrt.errors import SourceError
from toxrt.sources.cameras import CaptureSource, open_live_source, parse_live_spec
from toxrt.sources.realtime import IterableSource, RealtimeSource
from toxrt.types import Frame

from .helpers import FakeClock, free_port


def images(n: int, shape=(6, 8)) -> list[np.ndarray]:
    return [np.full(shape, k, np.uint8) for k in range(n)]


def test_parse_live_spec():
    assert parse_live_spec("camera:0") == ("camera", 0)
    assert parse_live_spec("rtsp://10.0.0.2/stream") == ("url", "rtsp://10.0.0.2/stream")
    for bad in ("camera:front", "camera:", "video.mp4"):
        with pytest.raises(SourceError):
            parse_live_spec(bad)


def test_realtime_source_releases_each_frame_on_schedule():
    gate = threading.Semaphore(0)
    clock = FakeClock(1000.0, gate)
    source = RealtimeSource(IterableSource(images(10)), fps=20.0, clock=clock.time, sleep=clock.sleep)
    frames = []
    for frame in source:  # the consumer lets the clock go on after each frame: nothing is dropped
        frames.append(frame)
        gate.release()
    source.close()
    assert [f.index for f in frames] == list(range(10))
    assert [int(f.image[0, 0]) for f in frames] == list(range(10))
    np.testing.assert_allclose([f.time_s for f in frames], 1000.0 + np.arange(10) / 20.0)
    np.testing.assert_allclose(clock.sleeps, 0.05)
    assert (source.width, source.height, source.fps, source.dropped) == (8, 6, 20.0, 0)


def test_realtime_source_newest_frame_wins_and_drops_are_counted():
    clock = FakeClock(0.0)  # the replay runs ahead of a consumer that has not started yet
    inner = [Frame(100 + k, k / 10, img) for k, img in enumerate(images(12))]
    events = []
    source = RealtimeSource(IterableSource(inner), fps=10.0, clock=clock.time, sleep=clock.sleep, on_event=events.append)
    deadline = time.monotonic() + 10
    while source.grabbed < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    frames = list(source)
    source.close()
    assert [f.index for f in frames] == [111]  # the inner frames' indices are kept
    assert frames[0].time_s == pytest.approx(1.1)
    assert source.dropped == 11 and source.delivered == 1
    assert source.drain_events() == events  # the queue and the callback see the same events
    dropped = [e for e in events if e["type"] == "frames_dropped"]
    assert len(dropped) == 1 and dropped[0]["count"] == 11 and dropped[0]["frame"] == 111


def test_realtime_source_on_the_real_clock_never_runs_early():
    fps = 100.0
    source = RealtimeSource(IterableSource(images(8)), fps=fps)
    frames = list(source)
    source.close()
    assert frames and frames[-1].index == 7
    for frame in frames[1:]:  # a frame may be dropped, but none is released before its time
        assert frame.time_s - frames[0].time_s >= (frame.index - frames[0].index) / fps - 1e-3
    assert len(frames) + source.dropped == 8


def test_realtime_source_refuses_a_bad_rate_and_an_empty_input():
    with pytest.raises(SourceError):
        RealtimeSource(IterableSource(images(2)), fps=0.0)
    with pytest.raises(SourceError, match="no frame"):
        RealtimeSource(IterableSource([]), fps=10.0)


class FakeCapture:
    """Frames of constant BGR value; each read waits for a permit from the consumer, if a gate is given."""

    def __init__(self, values: list[int], gate: threading.Semaphore | None = None):
        self.values, self.gate, self.released = list(values), gate, False

    def read(self):
        if not self.values:
            return False, None
        if self.gate is not None and not self.gate.acquire(timeout=10):
            return False, None
        return True, np.full((4, 6, 3), self.values.pop(0), np.uint8)

    def get(self, prop: int) -> float:
        return 30.0

    def release(self) -> None:
        self.released = True


def test_capture_source_reconnects_after_the_source_fails():
    gate = threading.Semaphore(1)  # one permit for the first frame, read while opening
    captures = []

    def opener():
        attempt = len(captures)
        captures.append(attempt)
        if attempt == 0:
            return FakeCapture([0, 1, 2], gate)
        if attempt == 2:
            return FakeCapture([10, 11, 12], gate)
        raise SourceError("camera unplugged")

    events = []
    source = CaptureSource(opener, "fake camera", on_event=events.append, backoff_initial_s=0.01,
                           backoff_max_s=0.02)
    frames = []
    for frame in source:
        frames.append(frame)
        gate.release()
        if len(frames) == 6:
            break
    source.close()
    assert [int(f.image[0, 0]) for f in frames] == [0, 1, 2, 10, 11, 12]
    assert [f.index for f in frames] == list(range(6))
    assert all(f.image.ndim == 2 and f.image.dtype == np.uint8 for f in frames)
    assert all(b.time_s >= a.time_s for a, b in zip(frames, frames[1:]))
    assert (source.width, source.height, source.fps) == (6, 4, 30.0)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["source_lost", "source_regained"]
    assert events[0]["frame"] == 2 and events[1]["attempts"] == 2 and events[1]["frame"] == 3
    assert source.reconnects == 1 and source.dropped == 0


def test_capture_source_gives_up_after_the_reconnect_timeout():
    def opener():
        if not hasattr(opener, "opened"):
            opener.opened = True
            return FakeCapture([7])
        raise SourceError("unreachable")

    source = CaptureSource(opener, "fake stream", backoff_initial_s=0.01, backoff_max_s=0.02,
                           reconnect_timeout_s=0.1)
    frames = []
    with pytest.raises(SourceError, match="giving up"):
        for frame in source:
            frames.append(frame)
    source.close()
    assert [int(f.image[0, 0]) for f in frames] == [7]


def test_capture_that_opens_but_delivers_nothing_is_an_error():
    with pytest.raises(SourceError, match="no frame arrived"):
        CaptureSource(lambda: FakeCapture([]), "silent camera")


def test_unknown_camera_and_unreachable_urls_fail_quickly_with_a_clear_error():
    with pytest.raises(SourceError, match="no camera with index 99"):
        open_live_source("camera:99")
    closed = free_port(socket.SOCK_STREAM)  # nothing listens there: the connection is refused
    for url in (f"rtsp://127.0.0.1:{closed}/live", f"http://127.0.0.1:{closed}/video.mjpg"):
        with pytest.raises(SourceError, match="cannot open the stream"):
            open_live_source(url, open_timeout_s=2.0)
    # UDP has no connection to refuse: the open timeout ends the wait.
    with pytest.raises(SourceError, match="within 1 s"):
        open_live_source(f"udp://127.0.0.1:{free_port(socket.SOCK_DGRAM)}", open_timeout_s=1.0)


def test_udp_stream_from_ffmpeg_is_read_through_opencv():
    if shutil.which("ffmpeg") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("ffmpeg is missing on CI: install it (tools/install_system_deps.sh)")
        pytest.skip("ffmpeg is not installed")
    port = free_port(socket.SOCK_DGRAM)
    sender = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25",
         "-t", "30", "-c:v", "mpeg2video", "-g", "5", "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"])
    try:
        source = open_live_source(f"udp://127.0.0.1:{port}", open_timeout_s=10.0, read_timeout_s=5.0)
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == 10:
                break
        source.close()
    finally:
        sender.kill()
        sender.wait(timeout=10)
    assert (source.width, source.height) == (160, 120) and source.fps == pytest.approx(25.0)
    assert all(f.image.shape == (120, 160) and f.image.dtype == np.uint8 for f in frames)
    assert all(b.index > a.index and b.time_s >= a.time_s for a, b in zip(frames, frames[1:]))
    assert frames[-1].image.std() > 10  # the test pattern, not a blank frame
    assert source.description == f"udp://127.0.0.1:{port}"


def test_every_source_declares_whether_it_is_live_and_a_replay_of_frames_in_memory_is():
    frames = IterableSource(images(5), fps=10.0)
    assert (frames.live, frames.dropped, frames.drain_events()) == (False, 0, [])
    assert [int(image[0, 0]) for image in frames.sample(2)] == [0, 1]  # a sample consumes nothing
    assert [f.index for f in frames] == [0, 1, 2, 3, 4] and frames.n_frames is None
    replay = RealtimeSource(IterableSource(images(3)), fps=10.0, autostart=False)
    try:
        assert replay.live and replay.description.startswith("real-time replay of frames in memory")
        assert [int(image[0, 0]) for image in replay.sample(2)] == [0, 1]  # the inner source's sample
    finally:
        replay.close()
