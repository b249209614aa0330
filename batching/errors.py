"""Typed failures of the batcher; the server maps each to one HTTP status in one place."""

from __future__ import annotations

__all__ = [
    "BatchingError",
    "QueueFull",
    "DeadlineExceeded",
    "BatcherClosed",
    "BatchResultMismatch",
]


class BatchingError(Exception):
    """Base of every error the batcher raises itself (the batch function's own errors pass through as they are)."""


class QueueFull(BatchingError):
    """The request would push the queue past ``max_queue_size`` samples; nothing was enqueued."""

    def __init__(self, *, queued: int, requested: int, capacity: int, retry_after_s: float) -> None:
        self.queued = queued
        self.requested = requested
        self.capacity = capacity
        # Whole seconds, >= 1: it goes into a Retry-After header as is.
        self.retry_after_s = retry_after_s
        if requested > capacity:
            detail = f"a request of {requested} samples can never fit a queue of {capacity}"
        else:
            detail = f"{queued} of {capacity} samples queued, {requested} more do not fit"
        super().__init__(f"queue full: {detail}; retry after {retry_after_s:g} s")


class DeadlineExceeded(BatchingError):
    """The request's deadline passed before all of its samples were dispatched; they were dropped unrun."""

    def __init__(self, *, waited_s: float) -> None:
        self.waited_s = waited_s
        super().__init__(f"deadline exceeded after waiting {waited_s * 1000:.1f} ms in the queue")


class BatcherClosed(BatchingError):
    """The batcher is shutting down (or has shut down) and takes no more work."""

    def __init__(self, message: str = "not accepting work: shutting down") -> None:
        super().__init__(message)


class BatchResultMismatch(BatchingError):
    """The batch function broke its contract: it must return one result per item, as a sequence."""

    def __init__(self, *, expected: int, got: int | None, type_name: str | None = None) -> None:
        self.expected = expected
        self.got = got
        if got is None:
            message = f"batch function returned {type_name}, expected a sequence of {expected} results"
        else:
            message = f"batch function returned {got} results for a batch of {expected} items"
        super().__init__(message)
