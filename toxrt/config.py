"""One typed configuration, loaded from TOML, checked on load.

Top-level keys keep idtracker.ai's names where the meaning is the same; toxrt's own settings
live in tables (``[segmentation]``, ``[linking]``, ``[identity]``, ``[appearance]``, ``[recording]``,
``[sim]``, ``[streaming]``, ``[stats]``, ``[refine]``).
``toxrt/default.toml`` (shipped in the package; ``toxrt config --defaults`` prints it) documents
every key with its default; a test keeps the two in step.
Every numeric key has an explicit, finite range (stated in default.toml too); nan is refused
everywhere and inf wherever it means nothing (it is allowed only as the maximum of ``area_ths``).
Names, paths and addresses are checked here, before anything is tracked. Each stage receives only
its own table.
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

import tomli_w

from .config_checks import (DEFAULT_MARKER_ADDRESS, DEFAULT_PUBLISH_ADDRESS, DEFAULT_PUBLISH_FORMAT, PUBLISH_FORMATS,
                            auto_or_between, between, control_characters, is_file_spec, name_problem, option,
                            unit_interval, zmq_address_problem)
from .errors import ConfigError
from .roi import parse_roi_entry

BACKGROUND_STATS = ("median", "mean", "max", "min")
MAX_FRAME_INDEX = 2**40  # frame indices (tracking_intervals) beyond this are a typo, not a video
TRAJECTORY_FORMATS = ("npy", "csv", "h5")


@dataclass(frozen=True)
class SegmentationConfig:
    histogram_bins: int = option(32, lambda v: 2 <= v <= 256, "between 2 and 256")
    identification_image_size: int = option(0, lambda v: v == 0 or 8 <= v <= 256, "0 (auto) or 8..256")
    crossing_area_ratio: float = option(1.6, *between(1, 100, open_lo=True))
    min_blob_pixels_for_features: int = option(3, *between(1, 100_000))


@dataclass(frozen=True)
class LinkingConfig:
    max_distance_body_lengths: float = option(1.0, *between(0.01, 100))
    max_distance_px: float = option(0.0, *between(0.01, 100_000, zero=True))
    max_size_change: float = option(0.8, *between(0.001, 1000))
    max_unmatched_frames: int = option(3, *between(0, 10_000))
    process_noise: float = option(1.0, *between(1e-6, 1e6))
    measurement_noise: float = option(1.0, *between(1e-6, 1e6))
    crossing_release_frames: int = option(5, *between(1, 10_000))


@dataclass(frozen=True)
class IdentityConfig:
    decision_samples: int = option(5, *between(1, 10_000))
    model_decision_samples: int = option(1, *between(1, 10_000))
    revision_interval_frames: int = option(10, *between(1, 1_000_000))
    reference_samples: int = option(64, *between(1, 10_000))
    fragment_samples: int = option(24, *between(1, 10_000))
    reference_stride: int = option(3, *between(1, 10_000))
    reference_min_probability: float = option(0.5, unit_interval, "between 0 and 1")
    unseen_identity_similarity: float = option(0.2, unit_interval, "between 0 and 1")
    max_shape_difference: float = option(0.0, *between(0, 1e6))
    gauss_mu: float = option(1.0, lambda v: -1.0 <= v <= 1.0, "between -1 and 1 (a correlation)")
    gauss_sigma: float = option(0.05, *between(0.001, 10))
    correlation_levels: int = option(20, *between(2, 10_000))
    long_fragment_samples: int = option(50, *between(1, 1_000_000))
    fusion_samples: int = option(12, *between(1, 10_000))
    min_correlation: float = option(0.1, lambda v: -1.0 <= v <= 1.0, "between -1 and 1")

    def __post_init__(self) -> None:
        for key in ("decision_samples", "model_decision_samples"):
            if getattr(self, key) > self.fragment_samples:
                raise ConfigError(f"identity.{key}: {getattr(self, key)} must not exceed "
                                  f"identity.fragment_samples ({self.fragment_samples})")


@dataclass(frozen=True)
class AppearanceConfig:
    live: bool = option(True)
    live_inline: bool = option(False)
    band_fraction: float = option(0.3, *between(0.05, 1))
    global_acceptance: float = option(0.99, *between(0.5, 0.999999))
    certainty: float = option(3.0, *between(0, 1000, open_lo=True))
    min_images: int = option(4, *between(1, 1000))
    seeds: int = option(3, *between(1, 50))
    folds: int = option(4, *between(2, 20))
    images_per_fragment: int = option(64, *between(2, 100_000, zero=True))
    training_images_per_identity: int = option(2000, *between(10, 1_000_000, zero=True))
    live_retrain_interval_s: float = option(2.0, *between(0.1, 3600))
    live_images_per_identity: int = option(1000, *between(100, 1_000_000))


@dataclass(frozen=True)
class RecordingConfig:
    identification_images: bool = option(True)
    flush_interval_s: float = option(0.5, *between(0.01, 1))
    queue_frames: int = option(4000, *between(1, 1_000_000))


@dataclass(frozen=True)
class SimConfig:
    width: int = option(640, *between(64, 8192))
    height: int = option(480, *between(64, 8192))
    frames: int = option(1500, *between(1, 100_000_000))
    fps: float = option(25.0, *between(0.01, 10_000))
    seed: int = option(0, *between(0, 2**32 - 1))
    body_length_px: float = option(28.0, *between(6, 1000))
    speed_body_lengths: float = option(0.12, *between(0.0001, 10))
    blur_sigma: float = option(0.7, *between(0, 50))
    noise_sigma: float = option(3.0, *between(0, 255))
    uneven_light: float = option(0.15, unit_interval, "between 0 and 1")
    light_on_dark: bool = option(False)
    appearance_spread: float = option(1.0, unit_interval, "between 0 and 1")


PUBLISH_WHEN = ("auto", "on", "off")


@dataclass(frozen=True)
class StreamingConfig:
    realtime: bool = option(False)  # replay files / the simulated arena at their frame rate, newest frame wins
    publish_address: str = option(DEFAULT_PUBLISH_ADDRESS, lambda v: v == "" or zmq_address_problem(v) is None,
                                f"empty (off) or a ZeroMQ address such as {DEFAULT_PUBLISH_ADDRESS} (port 1..65535 or *)")
    publish_format: str = option(DEFAULT_PUBLISH_FORMAT, lambda v: v in PUBLISH_FORMATS, f"one of {PUBLISH_FORMATS}")
    marker_address: str = option(DEFAULT_MARKER_ADDRESS, lambda v: v == "" or zmq_address_problem(v) is None,
                               f"empty (off) or a ZeroMQ address such as {DEFAULT_MARKER_ADDRESS} (port 1..65535 or *)")
    allow_remote: bool = option(False)  # bind publish/marker sockets on non-loopback addresses
    publish_hwm: int = option(1000, *between(1, 1_000_000))
    source_timeout_s: float = option(3.0, *between(0.01, 3600))  # open/read timeout of streams
    wait_for_subscriber_s: float = option(0.0, *between(0, 3600))
    # When the publisher and marker sockets open: "auto" for live sources and real-time replay only.
    publish: str = option("auto", lambda v: v in PUBLISH_WHEN, f"one of {PUBLISH_WHEN}")

    camera: str = option("", lambda v: re.fullmatch(r"[A-Za-z0-9_.-]*", v) is not None,
                       "empty or letters, digits, '_', '.', '-'")  # carried in every message


@dataclass(frozen=True)
class StatsConfig:
    smooth_sigma_frames: float = option(1.0, *between(0, 10_000))
    moving_speed_body_lengths: float = option(0.5, *between(0, 1_000))
    frozen_speed_body_lengths: float = option(0.1, *between(0, 1_000))
    frozen_min_s: float = option(1.0, *between(0, 86_400))
    near_wall_body_lengths: float = option(1.0, *between(0, 1_000))
    zones: list[list[str]] = option([])

    def __post_init__(self) -> None:
        names = [zone[0] if zone else "" for zone in self.zones]
        for i, zone in enumerate(self.zones):
            if len(zone) < 2 or not zone[0].strip() or zone[0].lstrip()[:1] in "+-":
                raise ConfigError(f"stats.zones[{i}]: {zone!r} must be [name, roi entry, ...], "
                                  "e.g. [\"left\", \"+ Rectangle [[0, 0], [100, 480]]\"]")
            if names.count(zone[0]) > 1:
                raise ConfigError(f"stats.zones[{i}]: the name {zone[0]!r} is used twice")
        if self.frozen_speed_body_lengths > self.moving_speed_body_lengths:
            raise ConfigError("stats.frozen_speed_body_lengths: must not exceed stats.moving_speed_body_lengths")


REFINE_METHODS = ("accumulation", "contrastive")


@dataclass(frozen=True)
class RefineConfig:
    """``toxrt refine``: the offline identities of a recorded session (docs/offline.md). ``auto``, 0 or -1
    values are resolved once the device is known (``offline.refine.resolved``)."""

    method: str = option("accumulation", lambda v: v in REFINE_METHODS, f"one of {REFINE_METHODS}")
    device: str = option("auto", lambda v: v in ("auto", "cpu", "cuda"), "auto, cpu or cuda")
    image_size: int = option(32, *between(8, 256))
    network: str = option("auto", lambda v: v in ("auto", "resnet18", "small"), "auto, resnet18 or small")
    batch_pairs: int = option(0, *between(1, 100_000, zero=True))
    max_batches: int = option(0, *between(1, 100_000_000, zero=True))
    eval_every: int = option(0, *between(1, 1_000_000, zero=True))
    patience: int = option(0, *between(1, 1_000_000, zero=True))
    target_patience: int = option(2, *between(1, 1_000_000))
    silhouette_target: float = option(0.91, *between(-1, 1))
    min_improvement: float = option(-1.0, lambda v: v == -1 or 0 <= v < 1, "-1 (auto) or from 0 to below 1")
    silhouette_images: int = option(0, *between(1, 100_000_000, zero=True))
    images_per_fragment: int = option(0, *between(2, 100_000_000, zero=True))
    alpha: float = option(0.5, unit_interval, "between 0 and 1")
    learning_rate: float = option(1e-3, *between(0, 10, open_lo=True))
    seed: int = option(0, *between(0, 2**32 - 1))
    threads: int = option(0, *between(1, 4096, zero=True))
    bf16: str = option("auto", lambda v: v in ("auto", "on", "off"), "auto, on or off")
    checkpoint: str = option("", lambda v: not control_characters(v), "a path without control characters")
    resume: bool = option(True)
    max_crossing_gap: int = option(0, *between(1, 100_000_000, zero=True))
    min_batches: int = option(-1, *auto_or_between(0, 100_000_000))
    time_budget_s: float = option(-1.0, *auto_or_between(0, 1e7))


@dataclass(frozen=True)
class Config:
    name: str = option("", lambda v: name_problem(v) is None, "a plain name: no control characters, '/', '\\' or '..'")
    video_paths: list[str] = option([], lambda v: not any(control_characters(p) for p in v),
                                  "paths without control characters")
    number_of_animals: int = option(0, *between(1, 1000, zero=True))
    intensity_ths: list[float] = option([0.0, 155.0])
    area_ths: list[float] = option([50.0, math.inf])
    use_bkg: bool = option(False)
    background_subtraction_stat: str = option("median", lambda v: v in BACKGROUND_STATS, f"one of {BACKGROUND_STATS}")
    number_of_frames_for_background: int = option(50, *between(1, 1000))
    roi_list: list[str] = option([])
    tracking_intervals: list[list[int]] = option([])
    output_dir: str = option("", lambda v: not control_characters(v), "a path without control characters")
    trajectories_formats: list[str] = option(["npy", "csv"])
    frames_per_second: float = option(0.0, *between(0.01, 10_000, zero=True))
    px_per_cm: float = option(0.0, *between(1e-6, 1e6, zero=True))
    calibration_points: list[list[float]] = option([])
    calibration_distance_cm: float = option(0.0, *between(1e-6, 1e6, zero=True))
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    linking: LinkingConfig = field(default_factory=LinkingConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)

    def __post_init__(self) -> None:
        _check_pair("intensity_ths", self.intensity_ths, 0, 255)
        _check_pair("area_ths", self.area_ths, 0, math.inf)
        if not math.isfinite(self.area_ths[0]):
            raise ConfigError(f"area_ths: the minimum {self.area_ths[0]!r} must be a finite number of pixels")
        for fmt in self.trajectories_formats:
            if fmt not in TRAJECTORY_FORMATS:
                raise ConfigError(f"trajectories_formats: unknown format {fmt!r}; use {TRAJECTORY_FORMATS}")
        previous_end = 0
        for interval in self.tracking_intervals:
            if len(interval) != 2 or not 0 <= interval[0] < interval[1] <= MAX_FRAME_INDEX:
                raise ConfigError(f"tracking_intervals: {interval!r} must be [start, end) with "
                                  f"0 <= start < end <= {MAX_FRAME_INDEX}")
            if interval[0] < previous_end:
                raise ConfigError(f"tracking_intervals: {interval!r} overlaps or precedes the interval before it; "
                                  "give them sorted and without overlap")
            previous_end = interval[1]
        for i, entry in enumerate(self.roi_list):
            try:
                parse_roi_entry(entry)
            except ValueError as exc:
                raise ConfigError(f"roi_list[{i}]: cannot read {entry!r:.80} ({exc})") from None
        _check_calibration(self.px_per_cm, self.calibration_points, self.calibration_distance_cm)

    @property
    def is_simulated(self) -> bool:
        return len(self.video_paths) == 1 and self.video_paths[0].startswith("sim:")

    @property
    def length_unit(self) -> float | None:
        """Pixels per centimetre from px_per_cm or the two calibration points; None uncalibrated."""
        if self.px_per_cm > 0:
            return self.px_per_cm
        if self.calibration_points:
            (x0, y0), (x1, y1) = self.calibration_points
            return math.hypot(x1 - x0, y1 - y0) / self.calibration_distance_cm
        return None


def _check_calibration(px_per_cm: float, points: list[list[float]], distance_cm: float) -> None:
    if not points and distance_cm == 0:
        return
    if px_per_cm > 0:
        raise ConfigError("px_per_cm and calibration_points: give one calibration, not both")
    if len(points) != 2 or any(len(p) != 2 for p in points):
        raise ConfigError(f"calibration_points: {points!r} must be two points [[x0, y0], [x1, y1]] in pixels")
    if points[0] == points[1]:
        raise ConfigError(f"calibration_points: {points!r} are the same point")
    if distance_cm <= 0:
        raise ConfigError("calibration_distance_cm: must be positive (the real distance between calibration_points)")


def _check_pair(key: str, value: list[float], lo: float, hi: float) -> None:
    if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
        raise ConfigError(f"{key}: {value!r} must be [low, high] with {lo} <= low <= high <= {hi}")


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
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{key}: nan is not a usable value")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{key}: {value} is out of range") from None
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


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: parameter file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); "
                          "save the parameter file as UTF-8") from None
    except RecursionError:
        raise ConfigError(f"{path}: TOML syntax error: arrays or tables nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read parameter file: {exc.strerror}") from None


def parse_override(key: str, text: str) -> Any:
    """A command-line value read as a TOML value (numbers, lists, booleans), else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
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
        values = read_toml(path)
        base = path.resolve().parent
    for key, value in (overrides or {}).items():
        merge_dotted(values, key, value)
    config = build_config(values)
    videos = [str(base / v) if is_file_spec(v) else v for v in config.video_paths]
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
    """Write a config dict as TOML (tomli_w escapes every string; inf stays inf)."""
    return tomli_w.dumps(values)
