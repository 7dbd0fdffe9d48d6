"""One typed configuration, loaded from TOML, checked on load.

Top-level keys keep idtracker.ai's names where the meaning is the same; toxrt's own settings
live in tables (``[segmentation]``, ``[linking]``, ``[identity]``, ``[recording]``, ``[sim]``).
``configs/default.toml`` documents every key with its default; a test keeps the two in step.
Each stage receives only its own table.
"""
from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

BACKGROUND_STATS = ("median", "mean", "max", "min")
TRAJECTORY_FORMATS = ("npy", "csv", "h5")


def _positive(value: float) -> bool:
    return value > 0


def _non_negative(value: float) -> bool:
    return value >= 0


def _unit_interval(value: float) -> bool:
    return 0.0 <= value <= 1.0


def _opt(default: Any, check=None, why: str = "") -> Any:
    """A dataclass field with a default and an optional range check (value -> bool)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"check": check, "why": why})
    return field(default=default, metadata={"check": check, "why": why})


@dataclass(frozen=True)
class SegmentationConfig:
    histogram_bins: int = _opt(32, lambda v: 2 <= v <= 256, "between 2 and 256")
    identification_image_size: int = _opt(0, lambda v: v == 0 or 8 <= v <= 256, "0 (auto) or 8..256")
    crossing_area_ratio: float = _opt(1.6, lambda v: v > 1.0, "above 1")
    min_blob_pixels_for_features: int = _opt(3, _positive, "positive")


@dataclass(frozen=True)
class LinkingConfig:
    max_distance_body_lengths: float = _opt(1.0, _positive, "positive")
    max_distance_px: float = _opt(0.0, _non_negative, "0 (use body lengths) or positive")
    max_size_change: float = _opt(0.8, _positive, "positive")
    max_unmatched_frames: int = _opt(3, _non_negative, "0 or more")
    process_noise: float = _opt(1.0, _positive, "positive")
    measurement_noise: float = _opt(1.0, _positive, "positive")
    crossing_release_frames: int = _opt(5, _positive, "positive")


@dataclass(frozen=True)
class IdentityConfig:
    decision_samples: int = _opt(5, _positive, "positive")
    revision_interval_frames: int = _opt(10, _positive, "positive")
    reference_samples: int = _opt(64, _positive, "positive")
    fragment_samples: int = _opt(24, _positive, "positive")
    reference_stride: int = _opt(3, _positive, "positive")
    reference_min_probability: float = _opt(0.5, _unit_interval, "between 0 and 1")
    unseen_identity_similarity: float = _opt(0.2, _unit_interval, "between 0 and 1")
    max_shape_difference: float = _opt(0.0, _non_negative, "0 (no shape filter) or positive")
    gauss_mu: float = _opt(1.0, None)
    gauss_sigma: float = _opt(0.05, _positive, "positive")
    correlation_levels: int = _opt(20, lambda v: v >= 2, "2 or more")
    long_fragment_samples: int = _opt(50, _positive, "positive")
    fusion_samples: int = _opt(12, _positive, "positive")
    min_correlation: float = _opt(0.1, lambda v: -1.0 <= v <= 1.0, "between -1 and 1")

    def __post_init__(self) -> None:
        if self.decision_samples > self.fragment_samples:
            raise ConfigError(f"identity.decision_samples: {self.decision_samples} must not exceed "
                              f"identity.fragment_samples ({self.fragment_samples})")


@dataclass(frozen=True)
class RecordingConfig:
    identification_images: bool = _opt(True)
    flush_interval_s: float = _opt(0.5, lambda v: 0 < v <= 1.0, "in (0, 1]")
    queue_frames: int = _opt(4000, _positive, "positive")


@dataclass(frozen=True)
class SimConfig:
    width: int = _opt(640, lambda v: v >= 64, "64 or more")
    height: int = _opt(480, lambda v: v >= 64, "64 or more")
    frames: int = _opt(1500, _positive, "positive")
    fps: float = _opt(25.0, _positive, "positive")
    seed: int = _opt(0, _non_negative, "0 or more")
    body_length_px: float = _opt(28.0, lambda v: v >= 6, "6 or more")
    speed_body_lengths: float = _opt(0.12, _positive, "positive")
    blur_sigma: float = _opt(0.7, _non_negative, "0 or more")
    noise_sigma: float = _opt(3.0, _non_negative, "0 or more")
    uneven_light: float = _opt(0.15, _unit_interval, "between 0 and 1")
    light_on_dark: bool = _opt(False)
    appearance_spread: float = _opt(1.0, _unit_interval, "between 0 and 1")


PUBLISH_FORMATS = ("msgpack", "json")


@dataclass(frozen=True)
class StreamingConfig:
    realtime: bool = _opt(False)  # replay files / the simulated arena at their frame rate, newest frame wins
    publish_address: str = _opt("tcp://127.0.0.1:5556", lambda v: v == "" or "://" in v, "empty (off) or a ZeroMQ address")
    publish_format: str = _opt("msgpack", lambda v: v in PUBLISH_FORMATS, f"one of {PUBLISH_FORMATS}")
    marker_address: str = _opt("tcp://127.0.0.1:5557", lambda v: v == "" or "://" in v, "empty (off) or a ZeroMQ address")
    allow_remote: bool = _opt(False)  # bind publish/marker sockets on non-loopback addresses
    publish_hwm: int = _opt(1000, _positive, "positive")
    source_timeout_s: float = _opt(3.0, _positive, "positive")  # open/read timeout of streams
    wait_for_subscriber_s: float = _opt(0.0, _non_negative, "0 (do not wait) or more")
    camera: str = _opt("", lambda v: re.fullmatch(r"[A-Za-z0-9_.-]*", v) is not None,
                       "empty or letters, digits, '_', '.', '-'")  # carried in every message


@dataclass(frozen=True)
class Config:
    name: str = _opt("")
    video_paths: list[str] = _opt([])
    number_of_animals: int = _opt(0, _non_negative, "0 (unknown) or more")
    intensity_ths: list[float] = _opt([0.0, 155.0])
    area_ths: list[float] = _opt([50.0, math.inf])
    use_bkg: bool = _opt(False)
    background_subtraction_stat: str = _opt("median", lambda v: v in BACKGROUND_STATS, f"one of {BACKGROUND_STATS}")
    number_of_frames_for_background: int = _opt(50, _positive, "positive")
    roi_list: list[str] = _opt([])
    tracking_intervals: list[list[int]] = _opt([])
    output_dir: str = _opt("")
    trajectories_formats: list[str] = _opt(["npy", "csv"])
    frames_per_second: float = _opt(0.0, _non_negative, "0 (read from the video) or positive")
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    linking: LinkingConfig = field(default_factory=LinkingConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)

    def __post_init__(self) -> None:
        _check_pair("intensity_ths", self.intensity_ths, 0, 255)
        _check_pair("area_ths", self.area_ths, 0, math.inf)
        for fmt in self.trajectories_formats:
            if fmt not in TRAJECTORY_FORMATS:
                raise ConfigError(f"trajectories_formats: unknown format {fmt!r}; use {TRAJECTORY_FORMATS}")
        for interval in self.tracking_intervals:
            if len(interval) != 2 or interval[0] < 0 or interval[1] <= interval[0]:
                raise ConfigError(f"tracking_intervals: {interval!r} must be [start, end) with 0 <= start < end")

    @property
    def is_simulated(self) -> bool:
        return len(self.video_paths) == 1 and self.video_paths[0].startswith("sim:")


def _check_pair(key: str, value: list[float], lo: float, hi: float) -> None:
    if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
        raise ConfigError(f"{key}: {value!r} must be [low, high] with {lo} <= low <= high <= {hi}")


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name in
            ("segmentation", "linking", "identity", "recording", "sim", "streaming")}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Convert a TOML value to the field's declared type, or name the key and value in an error."""
    origin = typing.get_origin(annotation)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(f"{key}[{i}]", item, item_type) for i, item in enumerate(value)]
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {annotation!r}")


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"unknown key {full!r}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a table [{full}]")
            kwargs[key] = _build(annotation, value, f"{full}.")
            continue
        converted = _coerce(full, value, annotation)
        check = known[key].metadata.get("check")
        if check is not None and not check(converted):
            raise ConfigError(f"{full}: {converted!r} is out of range ({known[key].metadata['why']})")
        kwargs[key] = converted
    return cls(**kwargs)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read parameter file: {exc.strerror}") from None


def parse_override(key: str, text: str) -> Any:
    """A command-line value read as a TOML value (numbers, lists, booleans), else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def merge_dotted(values: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set ``values['linking']['max_unmatched_frames']`` from the key ``linking.max_unmatched_frames``."""
    *tables, leaf = dotted_key.split(".")
    target = values
    for table in tables:
        target = target.setdefault(table, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{dotted_key}: {table!r} is not a table")
    target[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read a parameter file (optional), apply dotted-key overrides, and check everything.

    Relative ``video_paths`` and ``output_dir`` are taken relative to the parameter file.
    """
    values: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        values = _read_toml(path)
        base = path.resolve().parent
    for key, value in (overrides or {}).items():
        merge_dotted(values, key, value)
    config = build_config(values)
    videos = [v if v.startswith(("sim:", "camera:")) or "://" in v else str((base / v)) for v in config.video_paths]
    output_dir = str(base / config.output_dir) if config.output_dir else ""
    return dataclasses.replace(config, video_paths=videos, output_dir=output_dir)


def build_config(values: dict[str, Any]) -> Config:
    try:
        return _build(Config, values, "")
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # raised by a dataclass __post_init__ with a plain message
        raise ConfigError(str(exc)) from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain dict (TOML-writable: inf is kept as a float) of a config or one of its tables."""
    return dataclasses.asdict(config)


def to_toml(values: dict[str, Any]) -> str:
    """Write a config dict as TOML (only the types the config uses)."""
    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            if math.isinf(v):
                return "inf" if v > 0 else "-inf"
            return repr(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines = [f"{k} = {scalar(v)}" for k, v in values.items() if not isinstance(v, dict)]
    for table, sub in values.items():
        if isinstance(sub, dict):
            lines.append(f"\n[{table}]")
            lines.extend(f"{k} = {scalar(v)}" for k, v in sub.items())
    return "\n".join(lines) + "\n"
