"""Bad input from the command line: one line naming the problem, a non-zero exit, no traceback."""
import cv2
import numpy as np
import pytest

from .helpers import toxrt


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("toxrt: error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def params(tmp_path, text):
    path = tmp_path / "params.toml"
    path.write_text(text)
    return str(path)


def test_missing_parameter_file(tmp_path):
    assert_one_line_error(toxrt("track", "--load", str(tmp_path / "nope.toml")), "nope.toml", "not found")


def test_toml_syntax_error(tmp_path):
    assert_one_line_error(toxrt("track", "--load", params(tmp_path, "video_paths = [\n")), "params.toml", "TOML syntax error")


def test_unknown_key(tmp_path):
    assert_one_line_error(toxrt("track", "--load", params(tmp_path, 'video_paths = ["v.avi"]\nanimals = 3\n')), "'animals'")


def test_unknown_flag_key(tmp_path):
    result = toxrt("track", "--load", params(tmp_path, 'video_paths = ["v.avi"]\n'), "--linking.max_gap", "3")
    assert_one_line_error(result, "'linking.max_gap'")


def test_wrong_type_and_range(tmp_path):
    assert_one_line_error(toxrt("track", "--load", params(tmp_path, 'number_of_animals = "x"\n')), "number_of_animals", "integer")
    assert_one_line_error(toxrt("track", "--load", params(tmp_path, "area_ths = [100, 10]\n")), "area_ths")


def test_missing_video(tmp_path):
    result = toxrt("track", "--load", params(tmp_path, 'video_paths = ["gone.mp4"]\nnumber_of_animals = 2\n'))
    assert_one_line_error(result, "gone.mp4", "not found")


def test_empty_image_folder(tmp_path):
    (tmp_path / "frames").mkdir()
    result = toxrt("track", "--load", params(tmp_path, 'video_paths = ["frames"]\nnumber_of_animals = 2\n'))
    assert_one_line_error(result, "frames", "no images")


def test_corrupt_video(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x01garbage" * 100)
    result = toxrt("track", "--load", params(tmp_path, 'video_paths = ["bad.mp4"]\nnumber_of_animals = 2\n'))
    assert_one_line_error(result, "bad.mp4")


def test_thresholds_that_find_nothing(tmp_path):
    path = tmp_path / "blank.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(10):
        writer.write(np.full((48, 64, 3), 200, np.uint8))
    writer.release()
    result = toxrt("track", "--load", params(tmp_path, 'video_paths = ["blank.avi"]\nnumber_of_animals = 2\n'))
    assert_one_line_error(result, "intensity_ths")


def test_simulate_rejects_bad_values(tmp_path):
    assert_one_line_error(toxrt("simulate", str(tmp_path / "out"), "--animals", "0"), "number_of_animals")


def small_video(path, frames: int = 10):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for k in range(frames):
        image = np.full((48, 64, 3), 200, np.uint8)
        image[10:20, 5 + k:15 + k] = 20
        writer.write(image)
    writer.release()


def test_invalid_utf8_parameter_file(tmp_path):
    path = tmp_path / "params.toml"
    path.write_bytes(b'video_paths = ["v.avi"]\nname = "\xff\xfe"\n')
    assert_one_line_error(toxrt("track", "--load", str(path)), "params.toml", "not UTF-8")


def test_tracking_intervals_beyond_the_video(tmp_path):
    small_video(tmp_path / "v.avi")
    text = 'video_paths = ["v.avi"]\nnumber_of_animals = 1\ntracking_intervals = [[50, 60]]\n'
    assert_one_line_error(toxrt("track", "--load", params(tmp_path, text)), "tracking_intervals", "[50, 60]", "10 frames")


@pytest.mark.slow
def test_bad_names_ports_and_refine_options_are_one_line(tmp_path):
    base = params(tmp_path, 'video_paths = ["v.avi"]\n')
    assert_one_line_error(toxrt("track", "--load", base, "--name", "a\nb"), "name:", "control character")
    assert_one_line_error(toxrt("track", "--load", base, "--name", "../../escape"), "name:", "a plain name")
    assert_one_line_error(toxrt("track", "--load", base, "--streaming.publish_address", "tcp://127.0.0.1:99999"),
                          "streaming.publish_address", "1..65535")
    assert_one_line_error(toxrt("refine", str(tmp_path), "--max_batches", "x"), "max_batches", "integer")
    assert_one_line_error(toxrt("listen", "tcp://127.0.0.1:99999", "--duration", "0.1"), "99999")
