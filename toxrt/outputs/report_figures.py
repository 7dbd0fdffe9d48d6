"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes.

Identity colours are ``video.identity_colours``: identity k looks the same in the video and here.
"""
from __future__ import annotations

import io
import warnings

import numpy as np

from ..extras import require
from .results import Results
from .stats import Kinematics
from ..types import Status
from .video import identity_colours

DPI = 100


def _pyplot():
    matplotlib = require("matplotlib", "report", "toxrt report")
    matplotlib.use("Agg")  # no screen: files only
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _colours(results: Results) -> list[tuple[float, float, float]]:
    return [tuple(c / 255 for c in rgb) for rgb in identity_colours(results.n_animals)]


def trajectories_over_arena(results: Results, arena: np.ndarray | None) -> bytes:
    """Every identity's path over the arena image (the background, or the first frame)."""
    plt = _pyplot()
    width, height = results.width or 640, results.height or 480
    figure, axes = plt.subplots(figsize=(min(10.0, 10.0 * width / max(width, height)) + 1.6,
                                         10.0 * height / max(width, height)))
    if arena is not None:
        axes.imshow(arena, cmap="gray", vmin=0, vmax=255, extent=(0, arena.shape[1], arena.shape[0], 0))
    for j, colour in enumerate(_colours(results)):
        xy = results.trajectories[:, j]
        axes.plot(xy[:, 0], xy[:, 1], color=colour, linewidth=0.8, alpha=0.85, label=results.labels[j])
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    axes.set_aspect("equal")
    axes.set_xlabel("x (px)")
    axes.set_ylabel("y (px)")
    axes.legend(title="identity", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _png(figure)


def _runs(flag: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    edges = np.diff(np.r_[0, flag.astype(np.int8), 0])
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def identity_timeline(results: Results) -> bytes:
    """One row per identity: runs of measured positions (alternating shades, so each fragment shows),
    crossings in black, predicted in grey, gaps empty."""
    plt = _pyplot()
    t = results.time_s
    dt = 1.0 / results.fps
    figure, axes = plt.subplots(figsize=(12, 0.35 * results.n_animals + 1.2))
    for j, colour in enumerate(_colours(results)):
        status = results.status[:, j]
        for k, (start, length) in enumerate(_runs(status == Status.MEASURED)):
            shade = colour if k % 2 == 0 else tuple(0.55 * c for c in colour)
            axes.broken_barh([(t[start], length * dt)], (j - 0.4, 0.8), facecolors=shade, linewidth=0)
        for start, length in _runs(status == Status.CROSSING):
            axes.broken_barh([(t[start], length * dt)], (j - 0.4, 0.8), facecolors="black", linewidth=0)
        for start, length in _runs(status == Status.PREDICTED):
            axes.broken_barh([(t[start], length * dt)], (j - 0.4, 0.8), facecolors="0.6", linewidth=0)
    axes.set_yticks(range(results.n_animals), results.labels)
    axes.set_ylim(results.n_animals - 0.5, -0.5)
    axes.set_xlim(0, results.n_frames * dt)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("identity")
    axes.set_title("fragments (alternating shades), crossings (black), predicted (grey), gaps (white)", fontsize=9)
    return _png(figure)


MAX_PANELS = 16  # more identities than this: one heat map instead of a panel each


def probability_over_time(results: Results) -> bytes:
    """Per identity: its identity probability per frame (NaN inside crossings: not drawn)."""
    plt = _pyplot()
    n = results.n_animals
    if n > MAX_PANELS:
        figure, axes = plt.subplots(figsize=(12, 0.18 * n + 1.5))
        p = np.where(results.status >= 0, results.probability, np.nan).T
        shown = axes.imshow(p, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                            extent=(0, results.n_frames / results.fps, n - 0.5, -0.5))
        axes.set_yticks(range(n), results.labels, fontsize=6)
        axes.set_xlabel("time (s)")
        axes.set_ylabel("identity")
        figure.colorbar(shown, ax=axes, label="identity probability (white: no position or crossing)")
        return _png(figure)
    figure, axes = plt.subplots(n, 1, figsize=(12, 0.9 * n + 0.8), sharex=True, squeeze=False)
    t = results.time_s
    for j, colour in enumerate(_colours(results)):
        ax = axes[j, 0]
        p = np.where(results.status[:, j] >= 0, results.probability[:, j], np.nan)
        ax.plot(t, p, color=colour, linewidth=0.8)
        ax.fill_between(t, 0, 1, where=results.status[:, j] == Status.CROSSING, color="0.85", linewidth=0)
        ax.set_ylim(-0.05, 1.05)
        ax.set_yticks([0, 0.5, 1])
        ax.set_ylabel(results.labels[j], rotation=0, labelpad=12, va="center")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("time (s)")
    axes[0, 0].set_title("identity probability per frame (grey: inside a crossing)", fontsize=9)
    return _png(figure)


def speed_distributions(results: Results, k: Kinematics) -> bytes:
    """Per identity: the distribution of its speed (violin) with the median marked."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(5.0, 0.7 * results.n_animals + 2), 3.6))
    speeds = [s[np.isfinite(s)] for s in k.speed.T]
    present = [j for j, s in enumerate(speeds) if s.size >= 2]
    if present:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = axes.violinplot([speeds[j] for j in present], positions=present, showmedians=True, widths=0.8)
        colours = _colours(results)
        for body, j in zip(parts["bodies"], present):
            body.set_facecolor(colours[j])
            body.set_alpha(0.7)
    axes.set_xticks(range(results.n_animals), results.labels)
    axes.set_xlabel("identity")
    axes.set_ylabel(f"speed ({k.unit}/s)")
    return _png(figure)
