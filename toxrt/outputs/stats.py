"""Kinematics and arena statistics of a tracked session (``toxrt stats SESSION``).

Per animal: distance travelled, speed and acceleration, time moving and frozen, distance to the
walls of the arena and time near them, time in user zones, nearest-neighbour distance. Lengths are
in cm when the session is calibrated (``px_per_cm`` or two points), else in pixels.

Which library computes what, and why:

* speed and acceleration: ``trajectorytools`` (the idtracker.ai ecosystem's trajectory library):
  positions with gaps linearly interpolated, smoothed with a Gaussian of ``smooth_sigma_frames``
  (truncated at 5 sigma), then central differences, with its own unit conversion. ``movement``
  computes the same, but its last release for Python 3.11 (0.15) pulls in about 80 packages
  (napari-video, pynwb, tables, netCDF4, ...): too heavy for a tracker's runtime.
* walls and zones: the masks the tracker itself used (``roi.roi_mask_from_list``, the same
  roi_list syntax), OpenCV's exact Euclidean distance transform for the distance to the border.
* nearest neighbour: one broadcast over all frames (trajectorytools' interindividual distances
  loop over frames in Python, slow on long videos).

Values are taken only at frames where the animal has a position; its gaps are interpolated only
so that smoothing and differences can run across them.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..config import StatsConfig
from ..errors import ConfigError
from ..extras import require
from ..io.atomic import atomic_path, write_text_atomic
from ..roi import roi_mask_from_list
from .results import Results

STATS_DIR = "stats"


@dataclass
class Kinematics:
    """Per-frame quantities (T, N), NaN where the animal has no position. Lengths in ``unit``."""

    unit: str
    speed: np.ndarray  # unit / s
    acceleration: np.ndarray  # unit / s^2
    wall_distance: np.ndarray  # unit
    nn_distance: np.ndarray  # unit
    moving: np.ndarray  # bool
    frozen: np.ndarray  # bool
    near_wall: np.ndarray  # bool
    zones: dict[str, np.ndarray]  # name -> bool (T, N)


def speed_acceleration(trajectories: np.ndarray, fps: float, sigma_frames: float,
                       px_per_unit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Speed and acceleration magnitudes (T, N) from trajectorytools; NaN where no position."""
    tt = require("trajectorytools", "report", "statistics (toxrt stats, toxrt report)")
    n_frames, n = trajectories.shape[:2]
    speed = np.full((n_frames, n), np.nan)
    acceleration = np.full((n_frames, n), np.nan)
    known = ~np.isnan(trajectories[..., 0])
    usable = np.flatnonzero(known.sum(axis=0) >= 2)  # interpolation needs two points
    if n_frames < 3 or usable.size == 0:
        return speed, acceleration
    tr = tt.Trajectories.from_positions(trajectories[:, usable].copy(), interpolate_nans=True,
                                        smooth_params={"sigma": sigma_frames})
    tr.new_length_unit(px_per_unit, "unit")
    tr.new_time_unit(fps, "s")
    # trajectorytools' central differences drop the first and last frame
    speed[1:-1, usable] = tr.speed
    acceleration[1:-1, usable] = tr.acceleration
    speed[~known] = np.nan
    acceleration[~known] = np.nan
    return speed, acceleration


def arena_mask(results: Results) -> np.ndarray:
    """uint8 (H, W) 255 inside the tracked region (roi_list), the whole frame without one."""
    height, width = _frame_size(results)
    mask = roi_mask_from_list(results.parameters.get("roi_list") or [], height, width)
    return np.full((height, width), 255, np.uint8) if mask is None else mask


def wall_distance_px(mask: np.ndarray, trajectories: np.ndarray) -> np.ndarray:
    """Distance (T, N) in pixels from each position to the border of ``mask``; 0 outside it."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)  # the frame's edge is a wall
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return _lookup(distance, trajectories, outside=0.0)


def zone_masks(results: Results, zones: list[list[str]]) -> dict[str, np.ndarray]:
    height, width = _frame_size(results)
    masks = {}
    for i, (name, *entries) in enumerate(zones):
        try:
            masks[name] = roi_mask_from_list(entries, height, width)
        except ConfigError as exc:
            raise ConfigError(f"stats.zones[{i}] ({name!r}): {exc}") from None
    return masks


def nearest_neighbour_px(trajectories: np.ndarray) -> np.ndarray:
    """Distance (T, N) to the nearest other animal with a position, NaN when there is none."""
    n = trajectories.shape[1]
    if n < 2:
        return np.full(trajectories.shape[:2], np.nan)
    out = np.empty(trajectories.shape[:2])
    for start in range(0, len(trajectories), 65536):  # bounded memory: 64k frames * N * N at a time
        block = trajectories[start:start + 65536]
        d = np.linalg.norm(block[:, :, None, :] - block[:, None, :, :], axis=-1)
        d[:, np.arange(n), np.arange(n)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: nobody else in view
            out[start:start + len(block)] = np.nanmin(d, axis=2)
    return out


def compute(results: Results, cfg: StatsConfig) -> Kinematics:
    """Every per-frame quantity of the session, in cm when calibrated."""
    t = results.trajectories
    px_per_unit = results.length_unit or 1.0
    speed, acceleration = speed_acceleration(t, results.fps, cfg.smooth_sigma_frames, px_per_unit)
    body = results.to_units(results.body_length_px)
    known = ~np.isnan(t[..., 0])
    moving = known & (speed > cfg.moving_speed_body_lengths * body)
    slow = known & (speed < cfg.frozen_speed_body_lengths * body)
    frozen = _runs_at_least(slow, int(np.ceil(cfg.frozen_min_s * results.fps)))
    wall = results.to_units(wall_distance_px(arena_mask(results), t))
    wall[~known] = np.nan
    zones = {name: known & (_lookup(mask, t, outside=0) > 0) for name, mask in zone_masks(results, cfg.zones).items()}
    return Kinematics(unit=results.unit, speed=speed, acceleration=acceleration, wall_distance=wall,
                      nn_distance=results.to_units(nearest_neighbour_px(t)), moving=moving, frozen=frozen,
                      near_wall=known & (wall < cfg.near_wall_body_lengths * body), zones=zones)


def per_animal(results: Results, k: Kinematics) -> list[dict]:
    """One row per identity: totals in seconds and ``unit``, means over the frames with a position."""
    dt = 1.0 / results.fps
    u = k.unit
    known = ~np.isnan(results.trajectories[..., 0])
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an animal never seen: NaN means, no warning
        for j, label in enumerate(results.labels):
            seen = known[:, j]
            row = {
                "identity": label,
                "time_tracked_s": seen.sum() * dt,
                "fraction_tracked": seen.mean() if seen.size else np.nan,
                f"distance_travelled_{u}": np.nansum(k.speed[:, j]) * dt,
                f"mean_speed_{u}_per_s": np.nanmean(k.speed[:, j]),
                f"median_speed_{u}_per_s": np.nanmedian(k.speed[:, j]),
                f"max_speed_{u}_per_s": np.nanmax(k.speed[:, j]) if np.isfinite(k.speed[:, j]).any() else np.nan,
                f"mean_acceleration_{u}_per_s2": np.nanmean(k.acceleration[:, j]),
                "time_moving_s": k.moving[:, j].sum() * dt,
                "time_frozen_s": k.frozen[:, j].sum() * dt,
                f"mean_wall_distance_{u}": np.nanmean(k.wall_distance[:, j]),
                "time_near_wall_s": k.near_wall[:, j].sum() * dt,
                "fraction_near_wall": k.near_wall[:, j].sum() / seen.sum() if seen.any() else np.nan,
                f"mean_nearest_neighbour_{u}": np.nanmean(k.nn_distance[:, j]),
            }
            for name, inside in k.zones.items():
                row[f"time_in_{name}_s"] = inside[:, j].sum() * dt
                row[f"fraction_in_{name}"] = inside[:, j].sum() / seen.sum() if seen.any() else np.nan
            rows.append({key: (float(v) if not isinstance(v, str) else v) for key, v in row.items()})
    return rows


def settings_text(results: Results, cfg: StatsConfig) -> str:
    """How the numbers were computed, in one paragraph (printed, stored, shown in the report)."""
    body = results.to_units(results.body_length_px)
    u = results.unit
    calibration = f"{results.length_unit:g} px/cm" if results.length_unit else "none (lengths in pixels)"
    return (f"Calibration: {calibration}. Body length {body:.2f} {u}. Speed and acceleration: positions "
            f"smoothed with a Gaussian of sigma {cfg.smooth_sigma_frames:g} frames "
            f"({cfg.smooth_sigma_frames / results.fps:.3f} s, truncated at 5 sigma), then central differences "
            f"(trajectorytools). Moving: speed > {cfg.moving_speed_body_lengths:g} body lengths/s; frozen: speed "
            f"< {cfg.frozen_speed_body_lengths:g} body lengths/s for at least {cfg.frozen_min_s:g} s; near the wall: "
            f"closer than {cfg.near_wall_body_lengths:g} body lengths to the border of the arena.")


def write_stats(results: Results, cfg: StatsConfig, out_dir: Path | None = None
                ) -> tuple[dict[str, Path], list[dict]]:
    """``stats/per_animal.csv``, ``stats/per_frame.csv`` and ``stats/settings.json`` in the session.

    Returns the paths and the per-animal rows."""
    folder = Path(out_dir) if out_dir else results.folder / STATS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    k = compute(results, cfg)
    rows = per_animal(results, k)
    paths = {"per_animal": folder / "per_animal.csv", "per_frame": folder / "per_frame.csv",
             "settings": folder / "settings.json"}
    _write_rows(paths["per_animal"], rows)
    _write_per_frame(paths["per_frame"], results, k)
    write_text_atomic(paths["settings"], json.dumps({"text": settings_text(results, cfg), "unit": k.unit,
                                               "length_unit_px_per_cm": results.length_unit,
                                               "frames_per_second": results.fps, **asdict(cfg)}, indent=1))
    return paths, rows


def _write_rows(path: Path, rows: list[dict]) -> None:
    header = list(rows[0]) if rows else ["identity"]
    lines = [",".join(header)]
    lines += [",".join(v if isinstance(v, str) else f"{v:.6g}" for v in row.values()) for row in rows]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _write_per_frame(path: Path, results: Results, k: Kinematics) -> None:
    """Long format: one row per frame and identity with a position."""
    frame, animal = np.nonzero(~np.isnan(results.trajectories[..., 0]))
    u = k.unit
    xy = results.to_units(results.trajectories[frame, animal])
    columns = {"frame": frame, "time_s": frame / results.fps, "identity": animal + 1,
               f"x_{u}": xy[:, 0], f"y_{u}": xy[:, 1], f"speed_{u}_per_s": k.speed[frame, animal],
               f"acceleration_{u}_per_s2": k.acceleration[frame, animal],
               f"wall_distance_{u}": k.wall_distance[frame, animal],
               f"nearest_neighbour_{u}": k.nn_distance[frame, animal],
               "moving": k.moving[frame, animal], "frozen": k.frozen[frame, animal],
               "near_wall": k.near_wall[frame, animal],
               **{f"in_{name}": inside[frame, animal] for name, inside in k.zones.items()}}
    table = np.column_stack([np.asarray(v, np.float64) for v in columns.values()])
    fmt = ["%d", "%.4f", "%d"] + ["%.4f"] * 6 + ["%d"] * (3 + len(k.zones))
    with atomic_path(path) as tmp:
        np.savetxt(tmp, table, fmt=fmt, delimiter=",", header=",".join(columns), comments="")


def _frame_size(results: Results) -> tuple[int, int]:
    if results.width > 0 and results.height > 0:
        return results.height, results.width
    finite = results.trajectories[np.isfinite(results.trajectories[..., 0])]
    extent = finite.max(axis=0) if finite.size else np.zeros(2)
    return int(extent[1]) + 1, int(extent[0]) + 1


def _lookup(image: np.ndarray, trajectories: np.ndarray, outside: float) -> np.ndarray:
    """image[y, x] at each rounded position (T, N); ``outside`` off the image or without a position."""
    height, width = image.shape
    xy = np.nan_to_num(np.rint(trajectories), nan=-1).astype(np.int64)
    x, y = xy[..., 0], xy[..., 1]
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    out = np.full(trajectories.shape[:2], outside, np.float64)
    out[inside] = image[y[inside], x[inside]]
    return out


def _runs_at_least(flag: np.ndarray, min_length: int) -> np.ndarray:
    """bool (T, N): True where ``flag`` is inside a run of at least ``min_length`` True frames."""
    out = np.zeros_like(flag)
    for j in range(flag.shape[1]):
        edges = np.diff(np.r_[0, flag[:, j].astype(np.int8), 0])
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for a, b in zip(starts, ends):
            if b - a >= max(min_length, 1):
                out[a:b, j] = True
    return out


def format_table(rows: list[dict], unit: str) -> list[str]:
    """A few columns of the per-animal rows for the terminal."""
    lines = [f"{'id':>4} {'tracked s':>10} {'distance ' + unit:>14} {'speed ' + unit + '/s':>14} "
             f"{'moving s':>9} {'frozen s':>9} {'near wall':>9} {'NN ' + unit:>9}"]
    for r in rows:
        lines.append(f"{r['identity']:>4} {r['time_tracked_s']:>10.1f} {r[f'distance_travelled_{unit}']:>14.1f} "
                     f"{r[f'mean_speed_{unit}_per_s']:>14.2f} {r['time_moving_s']:>9.1f} {r['time_frozen_s']:>9.1f} "
                     f"{100 * r['fraction_near_wall']:>8.1f}% {r[f'mean_nearest_neighbour_{unit}']:>9.2f}")
    return lines


def run_stats(session_dir: str | Path, load: str | None, overrides: dict, out_dir: str | None) -> list[str]:
    """``toxrt stats``: write the CSVs and return the lines to print."""
    from .results import open_session

    results, config = open_session(session_dir, load, overrides)
    paths, rows = write_stats(results, config.stats, Path(out_dir) if out_dir else None)
    return format_table(rows, results.unit) + [settings_text(results, config.stats)] + \
        [f"written: {p}" for p in paths.values()]
