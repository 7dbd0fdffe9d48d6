"""A tracked session's results as the output tools read them (video, stats, report, export).

``load_results(folder)`` reads ``trajectories/trajectories.npy`` (toxrt's or idtracker.ai's layout),
``session.json`` and ``parameters.toml``. It only reads: every tool writes into its own subfolder.
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import Config
from ..errors import SessionError
from ..io.layout import PARAMETERS_TOML, SESSION_JSON
from ..io.trajectory_files import load_trajectories
from ..types import MISSING_STATUS, Status


@dataclass
class Results:
    """Per-frame, per-identity results (T frames, N identities) and what they were measured on.

    status: int8 (T, N), -1 missing, else types.Status. probability: float64 (T, N), idtracker.ai's
    semantics (0 missing, NaN in crossings). length_unit: pixels per cm, None uncalibrated.
    """

    folder: Path
    trajectories: np.ndarray
    probability: np.ndarray
    status: np.ndarray
    fps: float
    body_length_px: float
    width: int
    height: int
    video_paths: list[str]
    labels: list[str]
    length_unit: float | None
    data: dict = field(repr=False)
    meta: dict = field(repr=False)
    parameters: dict = field(repr=False)

    @property
    def n_frames(self) -> int:
        return int(self.trajectories.shape[0])

    @property
    def n_animals(self) -> int:
        return int(self.trajectories.shape[1])

    @property
    def time_s(self) -> np.ndarray:
        return np.arange(self.n_frames) / self.fps

    @property
    def unit(self) -> str:
        return "cm" if self.length_unit else "px"

    def to_units(self, pixels: np.ndarray | float) -> np.ndarray | float:
        """Lengths in pixels -> cm when calibrated, else unchanged."""
        return pixels / self.length_unit if self.length_unit else pixels

    @property
    def summary(self) -> dict:
        return dict(self.meta.get("summary") or {})


def _status_from(data: dict, trajectories: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """toxrt's status, or for idtracker.ai's own files: NaN probability at a position = crossing."""
    if "status" in data:
        return np.asarray(data["status"], np.int8)
    known = ~np.isnan(trajectories[..., 0])
    status = np.where(known, int(Status.MEASURED), MISSING_STATUS).astype(np.int8)
    status[known & np.isnan(probability)] = Status.CROSSING
    return status


def _length_unit(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 and math.isfinite(value) else None  # idtracker.ai's h5 writes -1 when unset


def load_results(session_dir: str | Path, px_per_cm: float | None = None) -> Results:
    """Load a session folder's trajectories and metadata; ``px_per_cm`` overrides the calibration."""
    folder = Path(session_dir)
    if not folder.is_dir():
        raise SessionError(f"{folder}: not a session folder (no such directory)")
    trajectories, data, npy = load_trajectories(folder)
    meta = _read_json(folder / SESSION_JSON)
    parameters = _read_toml(folder / PARAMETERS_TOML)
    n_frames, n = trajectories.shape[:2]
    probability = np.asarray(data.get("id_probabilities", np.ones((n_frames, n))), np.float64).reshape(n_frames, n)
    fps = float(data.get("frames_per_second") or meta.get("frames_per_second") or 0) or 25.0
    body_length = float(data.get("body_length") or meta.get("body_length_px") or math.nan)
    if px_per_cm is not None and px_per_cm <= 0:
        raise SessionError(f"px_per_cm: {px_per_cm!r} must be positive")
    labels = [str(x) for x in data.get("identities_labels", [])] or [str(k) for k in range(1, n + 1)]
    return Results(
        folder=folder, trajectories=trajectories, probability=probability,
        status=_status_from(data, trajectories, probability), fps=fps, body_length_px=body_length,
        width=int(data.get("width") or meta.get("width") or 0), height=int(data.get("height") or meta.get("height") or 0),
        video_paths=[str(p) for p in (data.get("video_paths") or meta.get("video_paths") or [])],
        labels=labels, length_unit=px_per_cm or _length_unit(data.get("length_unit")),
        data=data, meta=meta, parameters=parameters)


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SessionError(f"{path}: unreadable: {exc}".splitlines()[0]) from None
    return value if isinstance(value, dict) else {}


def _read_toml(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SessionError(f"{path}: unreadable: {exc}".splitlines()[0]) from None


def open_session(session_dir: str | Path, load: str | Path | None = None,
                 overrides: dict | None = None) -> tuple[Results, Config]:
    """Results and settings for an output tool: the session's parameters, a file, then flags."""
    from ..io.session_reader import load_session_config

    config = load_session_config(session_dir, load, overrides)
    return load_results(session_dir, px_per_cm=config.length_unit), config
