"""Waiting out an S3 or SQS outage: exponential backoff with jitter, and one log line per outage."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from batchserve.jobs.aws import is_unavailable

T = TypeVar("T")

INITIAL_S = 0.2
MAX_S = 10.0
# Bound of one S3 or SQS call (botocore's own attempts included) before it counts as failed: a
# connection can hang without ever erroring, and a held message must not wait on it forever.
CALL_TIMEOUT_S = 15.0


class Backoff:
    """Delays that double from `initial_s` up to `max_s` (each randomised by ±25 % so that workers
    that lost the service together do not return together); `reset` after a success."""

    def __init__(self, initial_s: float = INITIAL_S, max_s: float = MAX_S) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s
        self.failures = 0

    def reset(self) -> None:
        self._next = self.initial_s
        self.failures = 0

    def next_delay(self) -> float:
        delay = self._next * random.uniform(0.75, 1.25)
        self._next = min(self.max_s, self._next * 2)
        self.failures += 1
        return delay

    async def wait(self) -> None:
        await asyncio.sleep(self.next_delay())


class GaveUp(Exception):
    """A retried call was abandoned because the worker is shutting down."""


async def retrying(call: Callable[[], Awaitable[T]], what: str, log: logging.Logger,
                   keep_trying: Callable[[], bool], timeout_s: float = CALL_TIMEOUT_S) -> T:
    """`call()`, retried with backoff while it fails with an outage (or takes over `timeout_s`) and
    `keep_trying()` says so. Other errors propagate at once; GaveUp when it stopped trying."""
    backoff = Backoff()
    while True:
        try:
            result = await asyncio.wait_for(call(), timeout_s)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if not keep_trying():
                raise GaveUp(f"{what}: {exc}") from exc
            delay = backoff.next_delay()
            if backoff.failures == 1:
                log.warning("%s failed (%s); retrying with backoff", what, exc)
            await asyncio.sleep(delay)
            continue
        if backoff.failures:
            log.info("%s succeeded after %d retries", what, backoff.failures)
        return result
