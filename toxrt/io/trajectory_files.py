"""Trajectory files in idtracker.ai's layout (written from ``trajectories.assemble``'s arrays), and read back.

``trajectories/<name>.npy`` is a dict saved with ``np.save`` (load it with
``np.load(path, allow_pickle=True).item()``) with every key idtracker.ai 6 writes:

    trajectories          float64 (frames, N, 2)  x, y in pixels, NaN where the animal is missing
    id_probabilities      float64 (frames, N, 1)  probability of the identity: 0 where there is no
                          position, NaN inside a crossing (the position comes from a crossing blob)
    version               str     toxrt's version
    video_paths           list[str]
    frames_per_second     float
    body_length           float   pixels (median body length)
    width, height         int     pixels
    estimated_accuracy    float   image-weighted mean probability of the identities given, None when
                                  the identity stage did not estimate it
    areas                 dict    "mean", "median", "std": float64 (N,) area in pixels of each identity's
                                  individual blobs (crossings excluded), NaN for an identity never seen
    setup_points          dict    {} (toxrt defines no setup points)
    identities_labels     list[str]  "1".."N"
    identities_groups     dict    group name -> list of identities; {} (toxrt has no exclusive ROIs)
    length_unit           float   pixels per real length unit (cm) from the calibration, None without one
    silhouette_score      float   of the contrastive embedding (``toxrt refine``), None otherwise
    fragment_connectivity float   coexisting fragments per fragment / (N - 1), None when not measured
    fraction_identified   float   fraction of finite entries of ``trajectories``

and toxrt's own keys: ``status`` int8 (frames, N) (-1 missing, else types.Status) and ``source``
("toxrt-live" or "toxrt-refined"). Quality values come from the caller (``quality=``) as a plain dict.
``trajectorytools.Trajectories.from_idtrackerai`` and idtracker.ai's ``load_trajectories`` load the
npy, the h5 and the csv folder; ``idtrackerai_format`` converts between them.

``<name>.npz`` holds the same arrays and scalars without pickling (``np.load(path)`` as it is,
``allow_pickle=False``): toxrt's own readers (``toxrt refine``) read it, so that no file in a shared
session folder can run code when read. ``setup_points`` and ``length_unit`` are left out of it.

The csv folder ``<name>_csv/`` holds ``trajectories.csv`` (header ``time,x1,y1,...``),
``id_probabilities.csv`` (``time,id1,...``), ``areas.csv`` (``mean, median, standard_deviation``, one
row per identity) and ``attributes.json`` (the other keys), like idtracker.ai's. Missing values are
written ``nan``: readers that use ``np.loadtxt`` (trajectorytools does) reject empty fields.
The h5 file keeps arrays as datasets, ``areas``, ``setup_points`` and ``identities_groups`` as
groups, the rest as attributes, and ``length_unit`` as -1 when unset (as idtracker.ai does).
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import SessionError
from .atomic import atomic_open, atomic_path, write_text_atomic
from .layout import trajectories_npy

log = logging.getLogger(__name__)

def area_summary(areas: np.ndarray | None, n: int) -> dict[str, np.ndarray]:
    """idtracker.ai's ``areas``: mean, median and std over frames of each identity's blob areas."""
    if areas is None or areas.size == 0:
        nan = np.full(n, np.nan)
        return {"mean": nan, "median": nan.copy(), "std": nan.copy()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an identity never seen: NaN, not a warning
        return {"mean": np.nanmean(areas, axis=0), "median": np.nanmedian(areas, axis=0),
                "std": np.nanstd(areas, axis=0)}


def trajectories_dict(trajectories: np.ndarray, id_probabilities: np.ndarray, status: np.ndarray,
                      meta: dict, areas: np.ndarray | None = None, quality: dict | None = None
                      ) -> dict[str, Any]:
    """The npy dict: idtracker.ai's keys from ``meta``, ``areas`` and ``quality``, plus toxrt's.

    meta keys read: video_paths, frames_per_second, body_length (or body_length_px), width, height,
    identities_labels, identities_groups, setup_points, length_unit, source. areas: float (T, N)
    per-frame blob areas (see Assembled). quality: estimated_accuracy, silhouette_score,
    fragment_connectivity (missing or NaN values are written None, as idtracker.ai does).
    """
    n = trajectories.shape[1]
    quality = quality or {}
    length_unit = meta.get("length_unit")
    return {
        "trajectories": np.asarray(trajectories, np.float64),
        "id_probabilities": np.asarray(id_probabilities, np.float64),
        "version": str(meta.get("version", __version__)),
        "video_paths": [str(p) for p in meta.get("video_paths", [])],
        "frames_per_second": float(meta.get("frames_per_second", 0.0)),
        "body_length": float(meta.get("body_length", meta.get("body_length_px", math.nan))),
        "width": int(meta.get("width", 0)),
        "height": int(meta.get("height", 0)),
        "estimated_accuracy": _optional_float(quality.get("estimated_accuracy")),
        "areas": area_summary(areas, n),
        "setup_points": dict(meta.get("setup_points", {})),
        "identities_labels": [str(x) for x in meta.get("identities_labels", range(1, n + 1))],
        "identities_groups": {str(k): [int(i) for i in v] for k, v in meta.get("identities_groups", {}).items()},
        "length_unit": None if length_unit is None or length_unit <= 0 else float(length_unit),
        "silhouette_score": _optional_float(quality.get("silhouette_score")),
        "fragment_connectivity": _optional_float(quality.get("fragment_connectivity")),
        "fraction_identified": float(np.isfinite(trajectories).mean()) if trajectories.size else math.nan,
        "status": np.asarray(status, np.int8),
        "source": str(meta.get("source", "toxrt-live")),
    }


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def write_trajectories(trajectories_dir: Path, trajectories: np.ndarray, id_probabilities: np.ndarray,
                       status: np.ndarray, meta: dict, formats: list[str],
                       filename: str = "trajectories", areas: np.ndarray | None = None,
                       quality: dict | None = None) -> list[Path]:
    """Write ``<filename>.npy`` and ``<filename>.npz`` always, ``<filename>_csv/`` for "csv",
    ``<filename>.h5`` for "h5".

    Shapes as in Assembled; meta, areas and quality as read by trajectories_dict. Each file is
    written to a temporary name and renamed. Returns the paths written.
    """
    folder = Path(trajectories_dir)
    folder.mkdir(parents=True, exist_ok=True)
    data = trajectories_dict(trajectories, id_probabilities, status, meta, areas, quality)
    written = [write_npy(folder / f"{filename}.npy", data), write_plain_npz(folder / f"{filename}.npz", data)]
    if "csv" in formats:
        written.append(_write_csv(folder / f"{filename}_csv", data))
    if "h5" in formats:
        written.append(_write_h5(folder / f"{filename}.h5", data))
    log.info("trajectories written: %s", ", ".join(str(p) for p in written))
    return written


def write_npy(path: Path, data: dict) -> Path:
    """The idtracker.ai-style npy: ``data`` pickled as one dict (read it with ``allow_pickle=True``)."""
    with atomic_open(path) as handle:
        np.save(handle, data, allow_pickle=True)
    return path


def write_plain_npz(path: Path, data: dict) -> Path:
    """The arrays, numbers, strings and string lists of ``data`` as an npz that loads without pickle."""
    plain = {}
    for key, value in data.items():
        if isinstance(value, (np.ndarray, int, float, str)) and not isinstance(value, bool):
            plain[key] = np.asarray(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            plain[key] = np.array(value, dtype=np.str_)
    with atomic_open(path) as handle:
        np.savez(handle, **plain)
    return path


def read_plain_npz(path: Path) -> dict[str, np.ndarray]:
    """What ``write_plain_npz`` wrote, loaded without pickle (a pickled entry raises ValueError)."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-writable")


def _write_csv(folder: Path, data: dict) -> Path:
    folder.mkdir(exist_ok=True)
    trajectories, probabilities = data["trajectories"], data["id_probabilities"][..., 0]
    n_frames, n = trajectories.shape[:2]
    fps = data["frames_per_second"]
    time_s = np.arange(n_frames) / fps if fps > 0 else np.arange(n_frames, dtype=np.float64)
    header = "time," + ",".join(f"x{k},y{k}" for k in range(1, n + 1))
    table = np.column_stack([time_s, trajectories.reshape(n_frames, 2 * n)])
    _savetxt(folder / "trajectories.csv", table, header, ["%.6f"] + ["%.3f"] * (2 * n))
    header = "time," + ",".join(f"id{k}" for k in range(1, n + 1))
    table = np.column_stack([time_s, probabilities])
    _savetxt(folder / "id_probabilities.csv", table, header, ["%.6f"] + ["%.4f"] * n)
    areas = data["areas"]
    table = np.column_stack([areas["mean"], areas["median"], areas["std"]])
    _savetxt(folder / "areas.csv", table, "mean, median, standard_deviation", "%.1f", delimiter=", ")
    # per-frame arrays (status) stay out: a long session would make a huge JSON file
    attributes = {k: v for k, v in data.items() if k != "areas" and not isinstance(v, np.ndarray)}
    text = json.dumps(attributes, indent=1, default=_json_value)
    write_text_atomic(folder / "attributes.json", text)
    return folder


def _savetxt(path: Path, table: np.ndarray, header: str, fmt: list[str] | str, delimiter: str = ",") -> None:
    with atomic_path(path) as tmp:
        np.savetxt(tmp, table, fmt=fmt, delimiter=delimiter, header=header, comments="")


def _write_h5(path: Path, data: dict) -> Path:
    """Arrays as datasets, dicts as groups, scalars and string lists as attributes (layout above)."""
    import h5py  # only needed for this format

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as file:
        for key, value in data.items():
            if key == "length_unit":
                file.attrs[key] = -1.0 if value is None else value
            elif isinstance(value, np.ndarray):
                file.create_dataset(key, data=value, compression="gzip")
            elif isinstance(value, dict):
                group = file.create_group(key)
                for name, item in value.items():
                    group.create_dataset(name, data=np.asarray(item))
            elif value is None:
                continue  # h5 attributes cannot hold None: a missing key means None
            elif isinstance(value, list):
                file.attrs[key] = np.array(value, dtype=h5py.string_dtype())
            else:
                file.attrs[key] = value
    return path


def idtrackerai_session_fields(session_dir: Path, meta: dict, number_of_frames: int,
                               number_of_animals: int) -> dict:
    """The session.json keys that idtracker.ai's ``Session.load`` and its tools read.

    Without ``session_folder`` idtrackerai_video fails; when it differs from where the file is,
    idtracker.ai rewrites session.json (keeping every key), so it is the folder's absolute path.
    No ``length_calibrations``: idtracker.ai 6.0.14 cannot save a session that loaded them from
    JSON (its LengthCalibration loses ``color``), and the calibration is in the trajectory files'
    ``length_unit`` anyway.
    """
    n = int(number_of_animals)
    return {
        "session_folder": str(Path(session_dir).resolve()),
        "number_of_frames": int(number_of_frames),
        "median_body_length": float(meta.get("body_length_px", math.nan)),
        "n_animals": n,
        "number_of_animals": n,
        "identities_labels": [str(k) for k in range(1, n + 1)],
        "identities_groups": {},
        "setup_points": {},
    }


def load_trajectories(session_or_npy: str | Path) -> tuple[np.ndarray, dict[str, Any], Path]:
    """Trajectories (F, N, 2), the whole dict and the file, from a session folder or a trajectories.npy
    (toxrt's or idtracker.ai's; the npy is unpickled: read only files you trust)."""
    path = Path(session_or_npy)
    npy = trajectories_npy(path) if path.is_dir() else path
    if not npy.is_file():
        raise SessionError(f"{npy}: trajectories file not found")
    try:
        loaded = np.load(npy, allow_pickle=True)
        data = loaded.item() if loaded.dtype == object and loaded.shape == () else None
    except (OSError, ValueError, EOFError) as exc:
        raise SessionError(f"{npy}: cannot read trajectories: {exc}") from None
    if not isinstance(data, dict) or "trajectories" not in data:
        raise SessionError(f"{npy}: not an idtracker.ai-style dict with a 'trajectories' key")
    trajectories = np.asarray(data["trajectories"], np.float64)
    if trajectories.ndim != 3 or trajectories.shape[2] != 2:
        raise SessionError(f"{npy}: 'trajectories' has shape {trajectories.shape}, expected (frames, animals, 2)")
    return trajectories, data, npy
