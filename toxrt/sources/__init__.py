"""Where frames come from: every source follows :class:`~toxrt.sources.protocol.FrameSource`.

``protocol`` (the interface, ``to_grey``), ``files`` (video files and image sequences, read ahead
in a thread) with ``decode`` (straight to grey), ``simulated`` (the built-in arena), ``threaded``
(the grabbing thread's one-frame slot), ``cameras`` (cameras and network streams, reconnecting),
``realtime`` (any source replayed at its frame rate). :func:`open_source` picks one from a config.
"""
from __future__ import annotations

from ..config import Config
from ..config_checks import is_live_spec
from ..errors import SourceError
from .cameras import open_live_source
from .files import VideoSource
from .protocol import FrameSource
from .simulated import SimulatedSource


def open_source(config: Config) -> FrameSource:
    """The source named by ``config.video_paths``: ``sim:`` for the simulated arena, ``camera:N`` or a
    stream URL for a live source (its only entry), else files."""
    paths = config.video_paths
    if not paths:
        raise SourceError("video_paths: no video given (set video_paths in the parameter file or with --video_paths)")
    if config.is_simulated:
        if config.number_of_animals < 1:
            raise SourceError("number_of_animals: the simulated arena needs at least one animal")
        return SimulatedSource(config)
    if any(is_live_spec(p) for p in paths):
        if len(paths) != 1:
            raise SourceError(f"video_paths: a live source must be the only entry, got {paths!r}")
        timeout = config.streaming.source_timeout_s
        return open_live_source(paths[0], fps=config.frames_per_second, open_timeout_s=timeout, read_timeout_s=timeout)
    return VideoSource(paths, config.frames_per_second, config.tracking_intervals)
