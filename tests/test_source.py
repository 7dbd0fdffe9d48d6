"""Sources read real files through OpenCV: videos, image sequences, broken files."""
import cv2
import numpy as np
import pytest

from toxrt.errors import SourceError
from toxrt.sources.files import VideoSource


def write_video(path, n_frames=30, size=(96, 64), fps=20.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(n_frames):
        image = np.full((size[1], size[0], 3), 200, np.uint8)
        cv2.circle(image, (10 + 2 * i, 32), 5, (20, 20, 20), -1)
        writer.write(image)
    writer.release()
    return path


def test_video_file_frames_in_order(tmp_path):
    source = VideoSource([str(write_video(tmp_path / "v.avi"))])
    frames = list(source)
    assert source.n_frames == 30 and source.fps == pytest.approx(20.0)
    assert [f.index for f in frames] == list(range(30))
    assert frames[0].image.shape == (64, 96) and frames[0].image.dtype == np.uint8
    assert frames[3].time_s == pytest.approx(3 / 20.0)
    assert source.stopped_early_at is None


def test_tracking_intervals_keep_original_indices(tmp_path):
    source = VideoSource([str(write_video(tmp_path / "v.avi"))], intervals=[[5, 10], [20, 23]])
    assert [f.index for f in source] == [5, 6, 7, 8, 9, 20, 21, 22]
    assert source.n_frames == 8


def test_two_videos_run_on(tmp_path):
    a, b = write_video(tmp_path / "a.avi", 10), write_video(tmp_path / "b.avi", 7)
    assert [f.index for f in VideoSource([str(a), str(b)])] == list(range(17))


def test_image_sequence_pattern_and_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(1, 6):
        cv2.imwrite(str(folder / f"frame_{i:06d}.png"), np.full((20, 30), i * 10, np.uint8))
    for path in (str(folder / "frame_%06d.png"), str(folder)):
        frames = list(VideoSource([path], fps=10))
        assert [int(f.image[0, 0]) for f in frames] == [10, 20, 30, 40, 50]


def test_background_samples_spread_over_the_video(tmp_path):
    source = VideoSource([str(write_video(tmp_path / "v.avi"))])
    samples = source.sample(5)
    assert len(samples) == 5 and samples[0].shape == (64, 96)


def test_truncated_video_stops_early_and_says_where(tmp_path):
    path = write_video(tmp_path / "v.avi", n_frames=60)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    source = VideoSource([str(path)])
    frames = list(source)
    assert 0 < len(frames) < 60
    assert source.stopped_early_at == len(frames)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing.avi", "file not found"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no images found"),
    (lambda d: (d / "junk.avi").write_bytes(b"not a video at all" * 10) and d / "junk.avi", "cannot be opened|no frame"),
])
def test_bad_inputs_are_source_errors(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        VideoSource([str(make(tmp_path))])


def test_the_reader_works_ahead_only_while_the_consumer_is_behind():
    import dataclasses
    import threading

    from toxrt.sources.files import prefetched
    from toxrt.types import Frame

    worked = threading.Event()

    def work(frame):
        worked.set()
        return dataclasses.replace(frame, time_s=-1.0)  # marks the frames the reader worked on

    frames = (Frame(i, float(i), np.zeros((2, 2), np.uint8)) for i in range(50))
    stream = prefetched(frames, depth=4, stop=threading.Event(), ahead=work)
    first = next(stream)
    assert first.time_s == 0.0  # nothing was queued yet: the consumer does this one's work
    assert worked.wait(10)  # the consumer stalls, frames pile up, the reader starts working ahead
    rest = list(stream)
    assert [f.index for f in [first, *rest]] == list(range(50))  # every frame once, in order
    assert any(f.time_s == -1.0 for f in rest)


@pytest.mark.slow
def test_detection_in_the_reader_gives_the_same_session(tmp_path):
    from toxrt.sources import files as source_module
    from toxrt.config import load_config
    from toxrt.tracking import run_tracking
    from toxrt.io.session_reader import load_session
    from toxrt.sim.writer import write_simulation

    sim = load_config(None, {"sim": {"frames": 80, "seed": 4, "width": 240, "height": 180,
                                     "body_length_px": 20}}).sim
    paths = write_simulation(tmp_path / "arena", sim, 4)
    recorded = {}
    for name, when in (("never", 1 << 30), ("always", 0)):
        source_module.AHEAD_WHEN_QUEUED = when
        try:
            config = load_config(paths["params"], {"output_dir": str(tmp_path / name), "appearance.live_inline": True})
            summary = run_tracking(config, progress=False)
        finally:
            source_module.AHEAD_WHEN_QUEUED = 2
        recorded[name] = load_session(summary["session"])
        assert summary["frames_detected_by_reader"] == (80 if name == "always" else 0)
    assert recorded["never"].n_frames == 80
    np.testing.assert_array_equal(recorded["always"].blobs, recorded["never"].blobs)
    np.testing.assert_array_equal(recorded["always"].hu(), recorded["never"].hu())


def test_recorded_sources_follow_the_protocol(tmp_path):
    from toxrt.config import build_config
    from toxrt.sources import open_source

    video = VideoSource([str(write_video(tmp_path / "v.avi", n_frames=5))])
    arena = open_source(build_config({"video_paths": ["sim:x"], "number_of_animals": 2,
                                      "sim": {"frames": 5, "width": 64, "height": 64, "body_length_px": 8}}))
    for source in (video, arena):
        assert (source.live, source.dropped, source.drain_events(), source.stopped_early_at) == (False, 0, [], None)
        source.work_ahead(None)
        assert len(list(source)) == 5
        source.close()
