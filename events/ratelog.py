"""Loud but bounded logging for conditions that can repeat thousands of times per second."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs a condition at most once per ``interval_s``, reporting how often it happened since.

    Dropping events under overload must be visible, but one log line per dropped event would
    turn an overload into a logging storm; one line per interval with a count is both.
    """

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval = interval_s
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def __call__(self, msg: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """Log ``msg % args`` unless a line went out less than an interval ago; True when logged."""
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            self._suppressed += 1
            return False
        if self._suppressed:
            msg = f"{msg} (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._logger.log(self._level, msg, *args, exc_info=exc_info)
        self._last = now
        self._suppressed = 0
        return True
