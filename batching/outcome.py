"""What the batcher hands back: per request (BatchOutcome), per batch to observers (BatchRecord), and the
scattering of one batch's results back to the requests that rode it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from batchserve.batching.queue import Part, Pending

__all__ = ["BatchOutcome", "BatchRecord", "deliver"]

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class BatchOutcome(Generic[R]):
    """What one ``submit()`` gets back."""

    results: list[R]
    """One per submitted item, in order."""
    queue_s: float
    """Submit until the start of the (last) batch that carried its items."""
    compute_s: float
    """Duration of the batch function call(s) that carried it (the longest, when split)."""
    batch_size: int
    """Size of the largest batch that carried its items."""
    batches: int
    """How many batches carried it (more than 1 when split)."""


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """Handed to the ``on_batch`` observer after every batch, successful or not."""

    size: int
    """Samples in the batch."""
    requests: int
    """Requests (or parts of split requests) that rode it."""
    queue_s_max: float
    """Longest wait, submit to dispatch, among them."""
    compute_s: float
    ok: bool


def deliver(
    parts: list[Part],
    results: list[Any] | None,
    error: BaseException | None,
    compute_s: float,
    drop: Callable[[Pending[Any]], bool],
) -> None:
    """Hand each part of a finished batch its slice of ``results`` (in order), or ``error``.

    A request resolves when its last part comes back. A failed part fails its whole request at once and
    ``drop`` withdraws its parts not yet dispatched. Requests already done (cancelled, or failed by another
    of their batches) are skipped: their results are discarded.
    """
    offset = 0
    whole = len(parts) == 1
    for pending, start, stop in parts:
        count = stop - start
        if compute_s > pending.compute_s:
            pending.compute_s = compute_s
        future = pending.future
        if future.done():
            pass
        elif error is not None:
            drop(pending)
            future.set_exception(error)
        elif start == 0 and stop == pending.size:
            assert results is not None
            mine = results if whole else results[offset : offset + count]
            future.set_result(
                BatchOutcome(mine, pending.queue_s, pending.compute_s, pending.batch_size, pending.batches)
            )
        else:
            assert results is not None
            if pending.results is None:
                pending.results = [None] * pending.size
            pending.results[start:stop] = results[offset : offset + count]
            pending.finished += count
            if pending.finished == pending.size:
                future.set_result(
                    BatchOutcome(
                        pending.results, pending.queue_s, pending.compute_s, pending.batch_size, pending.batches
                    )
                )
        offset += count
