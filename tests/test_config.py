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


# ---------------------------------------------------------------------------------------------
# Every numeric key has an explicit, finite range; nan and inf are refused where meaningless
# ---------------------------------------------------------------------------------------------

def numeric_fields(cls=Config, prefix=""):
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            yield from numeric_fields(annotation, f"{prefix}{f.name}.")
        elif annotation in (int, float):
            yield f"{prefix}{f.name}", f, annotation


def test_every_numeric_key_has_an_explicit_finite_range():
    fields = list(numeric_fields())
    assert len(fields) >= 40
    for key, f, annotation in fields:
        check, why = f.metadata.get("check"), f.metadata.get("why")
        assert check is not None and why, f"{key} has no range"
        assert check(f.default), f"{key}: its default is out of its own range"
        assert not check(10 ** 18) and not check(-(10 ** 18)), f"{key}: no bound"
        if annotation is float:
            assert not check(math.inf) and not check(-math.inf) and not check(1e308), f"{key} takes inf"


@pytest.mark.parametrize("text, message", [
    ("frames_per_second = inf", "frames_per_second: inf is out of range"),
    ("[sim]\nfps = 1e308", "sim.fps: 1e+308 is out of range"),
    ("[sim]\nblur_sigma = inf", "sim.blur_sigma: inf is out of range"),
    ("number_of_animals = 1e18", "number_of_animals: 1000000000000000000 is out of range (0 or from 1 to 1000)"),
    ("[identity]\nreference_samples = 1e12", "identity.reference_samples: 1000000000000 is out of range"),
    ("[identity]\ncorrelation_levels = 1e308", "identity.correlation_levels:"),
    ("[identity]\ngauss_mu = nan", "identity.gauss_mu: nan is not a usable value"),
    ("[streaming]\nwait_for_subscriber_s = inf", "streaming.wait_for_subscriber_s: inf is out of range"),
    ('roi_list = ["+ Rectangle [[0, 0], [1e12, 10]]"]', "roi_list[0]"),
    ('roi_list = ["+ Ellipse {\'center\': [0, 0], \'axes\': [1e12, 1], \'angle\': 0}"]', "within +-100000"),
    ('[streaming]\npublish_address = "tcp://127.0.0.1:99999"', "streaming.publish_address"),
    ('[streaming]\nmarker_address = "tcp://127.0.0.1:0x10"', "streaming.marker_address"),
    ("tracking_intervals = [[100, 200], [0, 50]]", "tracking_intervals: [0, 50] overlaps or precedes"),
    ("tracking_intervals = [[0, 100], [50, 150]]", "tracking_intervals: [50, 150] overlaps or precedes"),
    ("tracking_intervals = [[0, 1e15]]", "tracking_intervals"),
    ('name = "a\\nb"', "name: "),
    ('name = "tab\\there"', "name: "),
    ('name = "../../escape"', "name: '../../escape' is out of range (a plain name"),
    ('name = ".."', "name: "),
    ('output_dir = "out\\u0007put"', "output_dir: "),
    ('video_paths = ["v\\u0000.avi"]', "video_paths"),
    ("area_ths = [inf, inf]", "area_ths: the minimum inf"),
    ("intensity_ths = [nan, 100]", "intensity_ths[0]: nan"),
])
def test_values_that_would_crash_or_ruin_a_run_are_refused_at_load(tmp_path, text, message):
    params = tmp_path / "params.toml"
    params.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace("+", r"\+")
                       .replace(")", r"\)")):
        load_config(params)


def test_invalid_utf8_names_the_file(tmp_path):
    params = tmp_path / "latin1.toml"
    params.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.toml: not UTF-8 text"):
        load_config(params)


def test_names_and_paths_round_trip_through_tomli_w():
    tricky = 'v "quoted" \\back\\slash ünïcode ✓.avi'
    config = build_config({"name": "caf\u00e9 \"x\" 1", "video_paths": [tricky], "output_dir": "d:\\out 'q'"})
    assert build_config(tomllib.loads(to_toml(config_to_dict(config)))) == config


def test_session_folder_stays_inside_output_dir(tmp_path):
    from toxrt.io.layout import session_folder

    config = load_config(None, {"name": "ok.name-1", "video_paths": ["sim:x"], "output_dir": str(tmp_path)})
    assert session_folder(config).parent == tmp_path


def test_default_toml_states_each_numeric_range_as_the_schema_checks_it():
    lines = DEFAULT_TOML.read_text().splitlines()
    table = ""
    ranges = {}
    for above, line in zip([""] + lines, lines):
        if line.startswith("["):
            table = line.strip("[]") + "."
        elif " = " in line and not line.startswith("#"):
            ranges[table + line.split(" = ")[0].strip()] = above
    for key, f, _ in numeric_fields():
        assert ranges[key] == f"# Range: {f.metadata['why']}.", key
