"""Bounds on the work a process takes on at once, so that overload is refused before it costs anything.

Every front end shares them: a request the model could not queue anyway, or one that would wait
behind too many images for a decode thread, is turned away with 503 `overloaded` and a
`Retry-After` before its bytes are decoded (the HTTP server checks the queue before it even reads
the body). Only the event loop's thread touches a bound, so plain integers suffice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchserve.serving.errors import Overloaded, retry_after

if TYPE_CHECKING:
    from batchserve.serving.registry import LoadedModel

# Images queued for (or in) a decode thread. Decoding one image takes a few milliseconds, so 128
# waiting is well under a second of backlog on two cores, while the memory they hold (encoded
# bytes only) stays small; past it, more waiting only adds latency to work the batcher's queue
# bound would refuse anyway.
MAX_PENDING_DECODES = 128
# Retry-After when a bound other than the model's queue refused: its holders finish within a second.
BOUND_RETRY_AFTER_S = 1.0


class Bound:
    """A count of things in progress with a ceiling."""

    __slots__ = ("limit", "in_use", "refused_total")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a bound must allow at least 1, not {limit}")
        self.limit = limit
        self.in_use = 0
        self.refused_total = 0

    def try_take(self, count: int = 1) -> bool:
        """Take `count` places when they are free (False, counted as a refusal, when they are not).
        An idle bound takes any count, so a request larger than the limit is slow, never impossible."""
        if self.refuses(count):
            return False
        self.in_use += count
        return True

    def refuses(self, count: int = 1) -> bool:
        """Whether `try_take(count)` would refuse now; a refusal is counted, nothing is taken."""
        if self.in_use and self.in_use + count > self.limit:
            self.refused_total += 1
            return True
        return False

    def release(self, count: int = 1) -> None:
        self.in_use -= count


def queue_refusal(model: LoadedModel, samples: int = 1) -> Overloaded | None:
    """Overloaded when `model`'s batcher queue cannot take `samples` more right now, else None."""
    full = model.batcher.refusal(samples)
    if full is None:
        return None
    return Overloaded(
        f"model {model.name!r} version {model.version} has {full.queued} of {full.capacity} samples queued; "
        f"retry after {full.retry_after_s:g} s",
        headers=retry_after(full.retry_after_s),
    )


def bound_refusal(what: str, bound: Bound) -> Overloaded:
    return Overloaded(f"the server is overloaded: {bound.in_use} of {bound.limit} {what} in progress; retry shortly",
                      headers=retry_after(BOUND_RETRY_AFTER_S))
