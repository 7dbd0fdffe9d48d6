"""The typed configuration: defaults documented in toxrt/default.toml, errors that name the key."""
import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from toxrt.config import Config, build_config, config_to_dict, load_config, to_toml
from toxrt.errors import ConfigError

DEFAULT_TOML = Path(__file__).resolve().parents[1] / "toxrt" / "default.toml"


def test_default_toml_documents_every_key_with_its_default():
    documented = tomllib.loads(DEFAULT_TOML.read_text())
    assert documented == config_to_dict(Config())
    # Every key has a comment line somewhere above it in its block.
    lines = DEFAULT_TOML.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#") and not line.startswith("["):
            block = lines[max(0, i - 6):i]
            assert any(b.startswith("#") for b in block), f"undocumented key: {line}"


def test_default_toml_loads_as_a_parameter_file():
    assert load_config(DEFAULT_TOML) == dataclasses.replace(Config(), output_dir="")


def test_overrides_use_the_same_key_names(tmp_path):
    params = tmp_path / "p.toml"
    params.write_text('video_paths = ["v.avi"]\nnumber_of_animals = 3\n[linking]\nmax_unmatched_frames = 2\n')
    config = load_config(params, {"number_of_animals": 8, "linking.max_unmatched_frames": 5})
    assert config.number_of_animals == 8 and config.linking.max_unmatched_frames == 5
    assert config.video_paths == [str(tmp_path / "v.avi")]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"numbr_of_animals": 3}, "unknown key 'numbr_of_animals'"),
        ({"linking": {"max_gap": 3}}, "unknown key 'linking.max_gap'"),
        ({"number_of_animals": "eight"}, "number_of_animals: expected an integer"),
        ({"number_of_animals": -1}, "number_of_animals: -1 is out of range"),
        ({"intensity_ths": [200, 100]}, "intensity_ths"),
        ({"background_subtraction_stat": "mode"}, "background_subtraction_stat: 'mode' is out of range"),
        ({"trajectories_formats": ["xls"]}, "trajectories_formats: unknown format 'xls'"),
        ({"use_bkg": "yes"}, "use_bkg: expected true or false"),
        ({"linking": 3}, "linking: expected a table"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_config(values)


def test_toml_syntax_error_names_the_file(tmp_path):
    params = tmp_path / "broken.toml"
    params.write_text("number_of_animals = = 3\n")
    with pytest.raises(ConfigError, match="broken.toml: TOML syntax error"):
        load_config(params)


def test_written_parameters_read_back_identically():
    config = build_config({"number_of_animals": 4, "area_ths": [10, math.inf], "roi_list": ["+ Polygon [[0, 0], [5, 0], [5, 5]]"]})
    assert build_config(tomllib.loads(to_toml(config_to_dict(config)))) == config
