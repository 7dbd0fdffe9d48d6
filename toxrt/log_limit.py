"""Warnings about repeated events (rejected messages, slow flushes) without flooding the log.

The first ``first`` occurrences are logged one by one; after that at most one line per
``every_s`` seconds says how many more happened. A hostile sender of 10,000 bad messages costs
a handful of log lines, and the counters, not the log, carry the totals.
"""
from __future__ import annotations

import logging
import time
from typing import Callable


class WarningLimiter:
    """``warn(message)`` logs at WARNING, rate-limited; ``count`` is every call, logged or not."""

    def __init__(self, logger: logging.Logger, first: int = 5, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._first = first
        self._every_s = every_s
        self._clock = clock
        self._last_line = -float("inf")
        self._unreported = 0
        self.count = 0
        self.lines = 0

    def warn(self, message: str) -> None:
        self.count += 1
        now = self._clock()
        if self.count <= self._first:
            self._emit(message + (" (further ones are summarised)" if self.count == self._first else ""), now)
            return
        self._unreported += 1
        if now - self._last_line >= self._every_s:
            self._emit(f"{message} ({self._unreported} like it since the last report, {self.count} in all)", now)
            self._unreported = 0

    def _emit(self, line: str, now: float) -> None:
        self._log.warning("%s", line)
        self._last_line = now
        self.lines += 1
