"""Calibration: px_per_cm or two points and their distance; errors that name the keys."""
import math

import pytest

from toxrt.config import build_config
from toxrt.errors import ConfigError


def test_px_per_cm_is_the_length_unit():
    assert build_config({"px_per_cm": 8.5}).length_unit == 8.5
    assert build_config({}).length_unit is None


def test_two_points_and_their_distance():
    config = build_config({"calibration_points": [[100, 40], [400, 440]], "calibration_distance_cm": 25})
    assert config.length_unit == pytest.approx(math.hypot(300, 400) / 25)  # 20 px/cm


@pytest.mark.parametrize("values, message", [
    ({"px_per_cm": -1}, "px_per_cm: -1.0 is out of range"),
    ({"px_per_cm": 8, "calibration_points": [[0, 0], [1, 0]], "calibration_distance_cm": 1}, "give one calibration"),
    ({"calibration_points": [[0, 0]], "calibration_distance_cm": 1}, "calibration_points: [[0.0, 0.0]] must be two points"),
    ({"calibration_points": [[5, 5], [5, 5]], "calibration_distance_cm": 1}, "are the same point"),
    ({"calibration_points": [[0, 0], [10, 0]]}, "calibration_distance_cm: must be positive"),
    ({"calibration_distance_cm": 3}, "calibration_points: [] must be two points"),
])
def test_calibration_mistakes_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        build_config(values)
