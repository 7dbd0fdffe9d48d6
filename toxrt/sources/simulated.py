"""The built-in simulated arena (``video_paths = ["sim:NAME"]``) as a recorded :class:`FrameSource`."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..config import Config
from ..types import Frame
from .protocol import RecordedSource


class SimulatedSource(RecordedSource):
    """The simulated arena's frames; its ground truth stays available on ``arena``."""

    def __init__(self, config: Config):
        from ..sim.arena import SimulatedArena  # numba kernels: loaded only when simulating

        self.arena = SimulatedArena(config.sim, config.number_of_animals)
        self.width, self.height = self.arena.width, self.arena.height
        self.fps = config.frames_per_second or self.arena.fps
        self.n_frames = self.arena.n_frames
        self.description = f"simulated arena ({config.number_of_animals} animals, {self.width}x{self.height})"

    def __iter__(self) -> Iterator[Frame]:
        for index, image in self.arena.frames():
            yield Frame(index, index / self.fps, image)

    def sample(self, count: int) -> list[np.ndarray]:
        wanted = np.linspace(0, self.n_frames - 1, num=min(count, self.n_frames)).astype(int)
        return [self.arena.frame(int(i)) for i in wanted]
