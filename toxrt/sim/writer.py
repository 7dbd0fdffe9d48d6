"""A simulated arena written to disk: a video, its ground truth and a parameter file (``toxrt simulate``)."""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import cv2
import numpy as np

from ..config import SimConfig, config_to_dict, to_toml
from ..errors import ToxrtError
from .arena import SimulatedArena

logger = logging.getLogger(__name__)

VIDEO_CODECS = ("FFV1", "MJPG")  # lossless first; MJPG as a fallback for builds without FFV1


def write_simulation(out_dir: Path, cfg: SimConfig, number_of_animals: int, progress: bool = False) -> dict[str, Path]:
    """Render a simulated arena to ``out_dir`` with its ground truth and a parameter file.

    Writes ``video.avi`` (lossless FFV1 when available), ``groundtruth.csv`` (frame,id,x,y,crossing;
    0-based frames, ids 1..N, crossing 0/1), ``groundtruth.npz`` (positions, headings, crossing,
    body_length_px, fps, animal_body_length_px) and ``params.toml`` (a toxrt parameter file that
    tracks the video). Returns the paths by kind: video, csv, npz, params.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToxrtError(f"{out_dir}: cannot create the output folder: {exc.strerror}") from None
    arena = SimulatedArena(cfg, number_of_animals)
    paths = {
        "video": out_dir / "video.avi",
        "csv": out_dir / "groundtruth.csv",
        "npz": out_dir / "groundtruth.npz",
        "params": out_dir / "params.toml",
    }
    _write_video(paths["video"], arena, progress)
    _write_csv(paths["csv"], arena)
    np.savez_compressed(
        paths["npz"], positions=arena.positions, headings=arena.headings, crossing=arena.crossing,
        body_length_px=arena.body_length_px, fps=arena.fps,
        animal_body_length_px=2.0 * arena.appearance.half_length)
    params = {
        "name": "simulation",
        "video_paths": [paths["video"].name],
        "number_of_animals": number_of_animals,
        **arena.tracking_parameters(),
        "frames_per_second": arena.fps,
        "sim": config_to_dict(cfg),
    }
    paths["params"].write_text(
        "# Written by toxrt.sim.writer.write_simulation: tracks video.avi in this folder.\n" + to_toml(params))
    logger.info("wrote a simulated arena (%d frames, %d animals) to %s", arena.n_frames, number_of_animals, out_dir)
    return paths


def _write_video(path: Path, arena: SimulatedArena, progress: bool) -> None:
    size = (arena.width, arena.height)
    writer = None
    for codec in VIDEO_CODECS:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), arena.fps, size, isColor=False)
        if writer.isOpened():
            if codec == "MJPG":
                writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
            break
        writer.release()
        writer = None
    if writer is None:
        raise ToxrtError(f"{path}: OpenCV cannot write a video with any of the codecs {VIDEO_CODECS}")
    frames = arena.frames()
    if progress:
        from tqdm import tqdm
        frames = tqdm(frames, total=arena.n_frames, desc="simulate", unit="frame")
    try:
        for _, image in frames:
            writer.write(image)
    finally:
        writer.release()


def _write_csv(path: Path, arena: SimulatedArena) -> None:
    crossing = arena.crossing
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "id", "x", "y", "crossing"])
        for f in range(arena.n_frames):
            for i in range(arena.number_of_animals):
                x, y = arena.positions[f, i]
                writer.writerow([f, i + 1, f"{x:.4f}", f"{y:.4f}", int(crossing[f, i])])
