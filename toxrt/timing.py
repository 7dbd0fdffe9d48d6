"""Durations kept in a fixed ring, summarised as percentiles (memory does not grow with the run)."""
from __future__ import annotations

import numpy as np


class TimeRing:
    """The latest ``size`` durations in seconds (per-frame step times, capture-to-publish latencies)."""

    def __init__(self, size: int):
        self.values = np.zeros(size)
        self.count = 0  # durations ever added

    def add(self, seconds: float) -> None:
        self.values[self.count % self.values.size] = seconds
        self.count += 1

    def percentiles_ms(self, q=(50, 99)) -> list[float]:
        """Percentiles in milliseconds of the durations held, NaN before the first."""
        held = self.values[: min(self.count, self.values.size)]
        return [float(v) for v in np.percentile(held, q) * 1e3] if held.size else [float("nan")] * len(q)
