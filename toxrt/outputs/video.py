"""Overlay videos of a tracked session for checking by eye (``toxrt video SESSION``).

Each frame of the tracked video (grey, as the tracker saw it) gets, per identity: a trail of its
last positions, a marker by status (filled disc measured, ring predicted, cross in a crossing), and
its label in the identity's colour, as opaque as the identity is probable, with a "?" when the
probability is below ``low_probability``; plus the frame number and time. Colours are fixed per
identity (``identity_colours``), the same in the report.

Written with OpenCV as WebM: VP8 by default (VP9 on request). OpenCV's pip wheels carry an FFmpeg
that writes VP8/VP9 but no H.264 (``avc1`` fails to open), and browsers play WebM VP8/VP9 but not
OpenCV's other choice, MPEG-4 part 2 (``mp4v``).
"""
from __future__ import annotations

import colorsys
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..config import Config
from ..errors import ConfigError, SessionError, SourceError
from .results import Results
from ..types import Status

log = logging.getLogger(__name__)

VIDEO_DIR = "videos"
LEGEND = "ring: measured  dot: predicted  x: crossing  ?: probability < {:g}"
CODECS = {"vp8": "VP80", "vp9": "VP90"}


@dataclass(frozen=True)
class VideoOptions:
    start: int = 0  # first frame
    end: int | None = None  # frame after the last; None: to the end
    scale: float = 1.0  # size reduction: 0.5 halves width and height
    trail: int = 20  # frames of trail behind each animal (idtracker.ai's default)
    per_animal: bool = False  # one video per identity, centred on it, instead of the whole arena
    crop_body_lengths: float = 6.0  # side of the per-animal crop
    low_probability: float = 0.5  # labels below this probability get a "?"
    codec: str = "vp8"

    def check(self, n_frames: int) -> tuple[int, int]:
        end = n_frames if self.end is None else min(self.end, n_frames)
        if not 0 <= self.start < end:
            raise ConfigError(f"frame range [{self.start}, {self.end}) is empty or outside the session's "
                              f"0..{n_frames - 1}")
        if not 0 < self.scale <= 1:
            raise ConfigError(f"--scale: {self.scale} must be in (0, 1]")
        if self.trail < 0 or self.crop_body_lengths <= 0:
            raise ConfigError("--trail must be 0 or more and --crop positive")
        if self.codec not in CODECS:
            raise ConfigError(f"--codec: {self.codec!r}; use one of {', '.join(CODECS)}")
        return self.start, end


# matplotlib's tab10 with its grey replaced (grey means "predicted" and would vanish on grey video)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (120, 0, 60), (188, 189, 34), (23, 190, 207)]


def identity_colours(n: int) -> list[tuple[int, int, int]]:
    """n distinct RGB colours (0..255), the same for identity k in every video and figure."""
    hues = (np.arange(max(0, n - len(PALETTE))) * 0.618033988749895 + 0.05) % 1.0  # golden-ratio steps
    extra = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.9)) for h in hues]
    return (PALETTE + extra)[:n]


def source_frames(results: Results, config: Config, start: int, end: int) -> Iterator[np.ndarray]:
    """Grey frames [start, end) of the tracked video; the background (or grey) where it is gone."""
    if config.is_simulated:
        from ..sim.arena import SimulatedArena

        arena = SimulatedArena(config.sim, results.n_animals)
        for index in range(start, min(end, arena.n_frames)):
            yield arena.frame(index)
        return
    try:
        from ..sources.files import VideoSource

        source = VideoSource(results.video_paths, results.fps, [[start, end]])
    except SourceError as exc:
        log.warning("%s; drawing on the background image instead", exc)
        path = results.folder / "background.png"
        background = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.exists() else None
        if background is None:
            background = np.full((results.height, results.width), 128, np.uint8)
        for _ in range(start, end):
            yield background
        return
    try:
        for frame in source:
            yield frame.image
    finally:
        source.close()


def draw_frame(image: np.ndarray, results: Results, index: int, options: VideoOptions,
               colours: list[tuple[int, int, int]], scale: float) -> np.ndarray:
    """One overlay frame (BGR) at ``scale`` of the grey image."""
    if scale != 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    radius = max(3, int(round(0.25 * results.body_length_px * scale))) if np.isfinite(results.body_length_px) else 4
    first = max(0, index - options.trail)
    trail = results.trajectories[first:index + 1] * scale
    for j in range(results.n_animals):
        colour = colours[j][::-1]  # RGB -> BGR
        _draw_trail(canvas, trail[:, j], colour)
        x, y = results.trajectories[index, j] * scale
        if not np.isfinite(x):
            continue
        centre = (int(round(x)), int(round(y)))
        status = int(results.status[index, j])
        if status == Status.CROSSING:
            cv2.drawMarker(canvas, centre, colour, cv2.MARKER_TILTED_CROSS, 2 * radius, 2, cv2.LINE_AA)
        elif status == Status.MEASURED:  # a ring: the animal stays visible inside it
            cv2.circle(canvas, centre, radius, colour, 2, cv2.LINE_AA)
        else:
            cv2.circle(canvas, centre, max(2, radius // 2), colour, -1, cv2.LINE_AA)
        probability = results.probability[index, j]
        label = results.labels[j] + ("?" if np.isfinite(probability) and probability < options.low_probability else "")
        opacity = 1.0 if not np.isfinite(probability) else float(np.clip(0.25 + 0.75 * probability, 0.25, 1.0))
        _blend_text(canvas, label, (centre[0] + radius + 2, centre[1] - radius), colour, opacity)
    time_s = index / results.fps
    _blend_text(canvas, f"frame {index}  {int(time_s // 60):02d}:{time_s % 60:05.2f}", (6, 18),
                (255, 255, 255), 1.0, box=True)
    if canvas.shape[0] >= 120:
        _blend_text(canvas, LEGEND.format(options.low_probability), (6, canvas.shape[0] - 8), (255, 255, 255),
                    0.8, box=True, size=0.4)
    return canvas


def _draw_trail(canvas: np.ndarray, points: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Polyline through consecutive known points; a gap breaks it."""
    known = np.isfinite(points[:, 0])
    if known.sum() < 2:
        return
    edges = np.diff(np.r_[0, known.astype(np.int8), 0])
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        if b - a >= 2:
            cv2.polylines(canvas, [np.rint(points[a:b]).astype(np.int32)], False, colour, 1, cv2.LINE_AA)


def _blend_text(canvas: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int],
                opacity: float, box: bool = False, size: float = 0.5) -> None:
    """Text at ``origin`` (bottom-left), blended with the frame by ``opacity``; outlined unless boxed."""
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    (w, h), base = cv2.getTextSize(text, font, size, thick)
    x0, y0 = max(0, origin[0] - 2), max(0, origin[1] - h - 2)
    x1, y1 = min(canvas.shape[1], origin[0] + w + 2), min(canvas.shape[0], origin[1] + base + 2)
    if x1 <= x0 or y1 <= y0:
        return
    roi = canvas[y0:y1, x0:x1]
    layer = roi.copy()
    if box:
        layer[:] = 0
    else:
        cv2.putText(layer, text, (origin[0] - x0, origin[1] - y0), font, size, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(layer, text, (origin[0] - x0, origin[1] - y0), font, size, colour, thick, cv2.LINE_AA)
    cv2.addWeighted(layer, opacity, roi, 1.0 - opacity, 0.0, dst=roi)


@contextlib.contextmanager
def _quiet_stderr():
    """OpenCV's FFmpeg warns on stderr that the WebM tag is unusual, and then writes it fine."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def open_writer(path: Path, fps: float, size: tuple[int, int], codec: str) -> cv2.VideoWriter:
    with _quiet_stderr():
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*CODECS[codec]), fps, size)
    if not writer.isOpened():
        raise SessionError(f"{path}: OpenCV cannot write {codec} video here")
    return writer


def _crop(canvas: np.ndarray, centre: np.ndarray, side: int) -> np.ndarray:
    """A side x side window of ``canvas`` centred on ``centre``, padded black at the borders."""
    half = side // 2
    padded = cv2.copyMakeBorder(canvas, half, half, half, half, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    x, y = (int(round(v)) for v in centre)
    return padded[y:y + side, x:x + side]


def make_videos(results: Results, config: Config, options: VideoOptions, out_dir: Path | None = None,
                progress: bool = True) -> list[Path]:
    """Write the overlay video (or one per identity); returns the paths."""
    from tqdm import tqdm

    start, end = options.check(results.n_frames)
    folder = Path(out_dir) if out_dir else results.folder / VIDEO_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = results.folder.name.removeprefix("session_") or "session"
    colours = identity_colours(results.n_animals)
    height, width = results.height, results.width
    scale = options.scale
    size = (int(round(width * scale)) // 2 * 2, int(round(height * scale)) // 2 * 2)
    if options.per_animal:
        side = max(16, int(round(options.crop_body_lengths * results.body_length_px * scale)) // 2 * 2)
        paths = [folder / f"{name}_id{label}.webm" for label in results.labels]
        writers = [open_writer(p, results.fps, (side, side), options.codec) for p in paths]
        last = np.nan_to_num(np.nanmean(results.trajectories, axis=0), nan=0.0) * scale  # before first seen
    else:
        paths = [folder / f"{name}_tracked.webm"]
        writers = [open_writer(paths[0], results.fps, size, options.codec)]
    written = 0
    try:
        bar = tqdm(total=end - start, unit="frame", desc="video", disable=not progress)
        for index, image in enumerate(source_frames(results, config, start, end), start):
            canvas = draw_frame(image, results, index, options, colours, scale)
            if options.per_animal:
                here = results.trajectories[index] * scale
                last = np.where(np.isfinite(here), here, last)
                for j, writer in enumerate(writers):
                    writer.write(_crop(canvas, last[j], side))
            else:
                writers[0].write(canvas[:size[1], :size[0]])
            written += 1
            bar.update(1)
        bar.close()
    finally:
        for writer in writers:
            writer.release()
    if written == 0:
        raise SessionError(f"no frame of {', '.join(results.video_paths) or 'the video'} could be read")
    log.info("%d frames written to %s", written, ", ".join(map(str, paths)))
    return paths
