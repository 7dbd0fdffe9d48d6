"""Exports of a session's trajectories for other tools (``toxrt export SESSION``).

* ``trajectories_tidy.csv``: one row per frame and identity, ``frame,time,identity,x,y,status,
  probability`` (x, y in pixels; ``x_cm,y_cm`` follow when the session is calibrated). status is
  ``measured``, ``predicted``, ``crossing`` or ``missing`` (x, y ``nan``); probability as in the
  idtracker.ai layout (0 where missing, ``nan`` inside a crossing). pandas: ``pd.read_csv(path)``.
* ``<name>.analysis.h5``: SLEAP's analysis HDF5 layout with one node, ``centroid``, and one track
  per identity, which ``movement`` loads directly:
  ``movement.io.load_poses.from_sleap_file(path, fps=...)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..io.atomic import atomic_path, write_text_atomic
from ..types import MISSING_STATUS, STATUS_NAMES
from .results import Results

EXPORT_DIR = "exports"
FORMATS = ("tidy", "sleap")
CELL_STATUS_NAMES = {MISSING_STATUS: "missing", **STATUS_NAMES}


def write_tidy_csv(results: Results, path: Path) -> Path:
    """The tidy CSV (see the module docstring), written to a temporary name and renamed."""
    n_frames, n = results.trajectories.shape[:2]
    frame = np.repeat(np.arange(n_frames), n)
    identity = np.tile(np.arange(1, n + 1), n_frames)
    xy = results.trajectories.reshape(-1, 2)
    names = np.array([CELL_STATUS_NAMES.get(s, str(s)) for s in range(-1, 4)])
    status = names[np.clip(results.status.reshape(-1).astype(np.int64), -1, 3) + 1]
    columns = [frame.astype(str), np.char.mod("%.6f", frame / results.fps), identity.astype(str),
               np.char.mod("%.3f", xy[:, 0]), np.char.mod("%.3f", xy[:, 1]), status,
               np.char.mod("%.4f", results.probability.reshape(-1))]
    header = ["frame", "time", "identity", "x", "y", "status", "probability"]
    if results.length_unit:
        cm = xy / results.length_unit
        columns += [np.char.mod("%.4f", cm[:, 0]), np.char.mod("%.4f", cm[:, 1])]
        header += ["x_cm", "y_cm"]
    lines = [",".join(header)]
    if frame.size:
        table = columns[0]
        for column in columns[1:]:
            table = np.char.add(np.char.add(table, ","), column)
        lines += table.tolist()
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def write_sleap_analysis(results: Results, path: Path) -> Path:
    """SLEAP's analysis HDF5 (stored column-major for MATLAB, as SLEAP writes it): h5py sees
    tracks (N, 2, 1, T), track_occupancy (T, N), point_scores (N, 1, T), instance_scores and
    tracking_scores (N, T), track_names, node_names, edge_names, edge_inds, video_path, provenance."""
    import h5py

    t = results.trajectories  # (T, N, 2)
    known = ~np.isnan(t[..., 0])
    score = np.where(known, np.nan_to_num(results.probability, nan=0.0), np.nan)  # no score inside crossings
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as file:
        file.create_dataset("tracks", data=t.transpose(1, 2, 0)[:, :, None, :], compression="gzip")
        file.create_dataset("track_occupancy", data=known.astype(np.uint8), compression="gzip")
        file.create_dataset("point_scores", data=score.T[:, None, :], compression="gzip")
        file.create_dataset("instance_scores", data=score.T, compression="gzip")
        file.create_dataset("tracking_scores", data=score.T, compression="gzip")
        file.create_dataset("track_names", data=np.array(results.labels, dtype="S"))
        file.create_dataset("node_names", data=np.array([b"centroid"]))
        file.create_dataset("edge_names", data=np.zeros((0, 2), dtype="S1"))
        file.create_dataset("edge_inds", data=np.zeros((0, 2), dtype=np.int64))
        file.create_dataset("video_path", data=(results.video_paths[0] if results.video_paths else "").encode())
        file.create_dataset("video_ind", data=0)
        file.create_dataset("labels_path", data=str(results.folder).encode())
        file.create_dataset("provenance", data=json.dumps({"software": "toxrt", "version": __version__,
                                                           "frames_per_second": results.fps}).encode())
    return path


def export_session(results: Results, formats: list[str], out_dir: Path | None = None) -> list[Path]:
    """Write the asked formats into ``SESSION/exports`` (or ``out_dir``); returns the paths."""
    folder = Path(out_dir) if out_dir else results.folder / EXPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = results.folder.name.removeprefix("session_") or "session"
    written = []
    if "tidy" in formats:
        written.append(write_tidy_csv(results, folder / "trajectories_tidy.csv"))
    if "sleap" in formats:
        written.append(write_sleap_analysis(results, folder / f"{name}.analysis.h5"))
    return written
