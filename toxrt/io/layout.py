"""The session folder: where it is, what it is called, and the names of the files in it.

``<output_dir>/session_<name>/`` holds the recording (``recording.py`` writes it,
``session_reader.py`` loads it), the end-of-session identities (``session_end.py``), the
trajectories (``trajectory_files.py``) and what the output tools and ``toxrt refine`` add. Every
file is described in docs/architecture.md, "The session folder".
"""
from __future__ import annotations

import re
from pathlib import Path

from ..config import Config

FORMAT = "toxrt-session-1"  # session.json's "format"
SESSION_JSON = "session.json"
PARAMETERS_TOML = "parameters.toml"
BACKGROUND_PNG = "background.png"
BLOBS_DIR = "blobs"
CROPS_FILE = "identification_images.u8"
EVENTS_FILE = "events.jsonl"
LOCK_FILE = "toxrt.lock"
FRAGMENT_IDENTITIES = "fragment_identities.npz"
TRAJECTORIES_DIR = "trajectories"
TRAJECTORIES_NAME = "trajectories"  # trajectories/trajectories.npy, .npz, .h5, _csv/
OFFLINE_DIR = "offline"  # what toxrt refine writes besides the trajectories
RECORDING_FILES = (SESSION_JSON, PARAMETERS_TOML, BACKGROUND_PNG, CROPS_FILE, EVENTS_FILE)


def session_name(config: Config) -> str:
    """``name`` if given, else the first video's file name without suffix (``sim:NAME``: NAME)."""
    if config.name:
        return config.name
    first = config.video_paths[0] if config.video_paths else "session"
    if first.startswith("sim:"):
        return first[4:] or "simulated"
    stem = Path(first.rstrip("/")).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.replace("%", "")) or "session"


def session_folder(config: Config) -> Path:
    """``<output_dir>/session_<name>``; output_dir defaults to the first video's folder."""
    if config.output_dir:
        base = Path(config.output_dir)
    elif config.is_simulated or not config.video_paths:
        base = Path.cwd()
    else:
        first = Path(config.video_paths[0])
        base = first if first.is_dir() else first.parent
    return base / f"session_{session_name(config)}"


def trajectories_npy(folder: Path) -> Path:
    return Path(folder) / TRAJECTORIES_DIR / f"{TRAJECTORIES_NAME}.npy"
