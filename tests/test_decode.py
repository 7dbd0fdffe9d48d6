"""Decoding to grey through the luma plane gives OpenCV's own grey, on real encoded files."""
import cv2
import numpy as np
import pytest

from toxrt.sources.decode import luma_table, open_video, read_grey
from toxrt.sources.files import VideoSource


def write_video(path, fourcc: str, colour: bool, n_frames: int = 12, size=(160, 96)):
    """Frames with a full grey ramp (every level is seen) and a moving dark disc, grey or coloured."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, size)
    assert writer.isOpened()
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    for i in range(n_frames):
        image = cv2.merge([ramp, ramp, ramp])
        if colour:
            image[: height // 2, :, 0] = np.clip(ramp[: height // 2] * 0.6 + 40, 0, 255).astype(np.uint8)
            image[height // 2:, :, 2] = np.clip(ramp[height // 2:] * 0.8 + 30, 0, 255).astype(np.uint8)
        cv2.circle(image, (20 + 8 * i, height // 2), 9, (15, 25, 35) if colour else (20, 20, 20), -1)
        writer.write(image)
    writer.release()
    return str(path)


def opencv_grey(path: str) -> list[np.ndarray]:
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    capture.release()
    return frames


@pytest.mark.parametrize("suffix, fourcc", [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_grey_videos_decode_to_opencvs_grey(tmp_path, suffix, fourcc):
    path = write_video(tmp_path / f"grey{suffix}", fourcc, colour=False)
    assert luma_table(path) is not None  # the luma path is taken
    expected = opencv_grey(path)
    frames = [f.image for f in VideoSource([path])]
    assert len(frames) == len(expected) == 12
    for got, want in zip(frames, expected):
        assert got.shape == want.shape and got.dtype == np.uint8
    off = np.array([np.abs(got.astype(int) - want) for got, want in zip(frames, expected)])
    # Exact but for the few pixels whose compressed chroma is not quite neutral.
    assert off.max() <= 1 and np.mean(off > 0) < 0.01, np.bincount(off.ravel())


def test_colour_videos_stay_within_one_grey_level(tmp_path):
    path = write_video(tmp_path / "colour.mp4", "mp4v", colour=True)
    expected = opencv_grey(path)
    frames = [f.image for f in VideoSource([path])]
    assert len(frames) == len(expected)
    off = np.array([np.abs(got.astype(int) - want) for got, want in zip(frames, expected)])
    assert np.mean(off > 1) <= 1e-3, np.bincount(off.ravel())


def test_samples_and_frames_share_one_grey(tmp_path):
    # The background is computed from samples: they must be decoded as the tracked frames are.
    path = write_video(tmp_path / "colour.mp4", "mp4v", colour=True)
    source = VideoSource([path])
    frames = [f.image for f in source]
    np.testing.assert_array_equal(source.sample(12)[5], frames[5])


def test_read_grey_stops_and_reuses_nothing_it_hands_out(tmp_path):
    path = write_video(tmp_path / "grey.mp4", "mp4v", colour=False)
    table = luma_table(path)
    capture = open_video(path, luma=True)
    frames = list(read_grey(capture, table, stop=5))
    capture.release()
    assert len(frames) == 5
    assert len({f.ctypes.data for f in frames}) == 5  # every frame its own array
    assert not np.array_equal(frames[0], frames[4])  # the disc moved
