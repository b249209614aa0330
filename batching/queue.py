"""The FIFO of waiting requests and the cutting of batches out of it.

Requests stay whole in the queue (their items are never copied one by one into a queue); a batch takes
slices of them. A request larger than the room left in a batch is split: its first slice rides this batch,
the rest stays at the head of the queue for the next one.

Removal of a cancelled or expired request is lazy: it is marked and the counters are fixed at once, and the
deque entry is skipped when it reaches the head. That keeps cancellation O(1) whatever the queue length.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

__all__ = ["Pending", "Part", "RequestQueue"]

T = TypeVar("T")


class Pending(Generic[T]):
    """One submitted request: its items, how far dispatch has got, and what its batches reported back."""

    __slots__ = (
        "items",
        "size",
        "next",
        "queued",
        "finished",
        "results",
        "future",
        "submitted_at",
        "deadline",
        "timer",
        "queue_s",
        "compute_s",
        "batch_size",
        "batches",
    )

    def __init__(
        self,
        items: Sequence[T],
        future: asyncio.Future[Any],
        submitted_at: float,
        deadline: float | None,
    ) -> None:
        self.items = items
        self.size = len(items)
        self.next = 0  # index of the first item not yet dispatched
        self.queued = True  # has undispatched items and was not dropped
        self.finished = 0  # items whose results came back (only tracked for split requests)
        self.results: list[Any] | None = None  # filled slice by slice when split
        self.future = future
        self.submitted_at = submitted_at
        self.deadline = deadline
        self.timer: asyncio.TimerHandle | None = None
        self.queue_s = 0.0
        self.compute_s = 0.0
        self.batch_size = 0
        self.batches = 0


Part = tuple[Pending[Any], int, int]
"""(request, start, stop): the slice ``request.items[start:stop]`` rides a batch."""


class RequestQueue(Generic[T]):
    __slots__ = ("_fifo", "samples", "requests")

    def __init__(self) -> None:
        self._fifo: deque[Pending[T]] = deque()
        self.samples = 0  # undispatched samples of live requests
        self.requests = 0  # live requests with undispatched samples

    def push(self, pending: Pending[T]) -> None:
        self._fifo.append(pending)
        self.samples += pending.size
        self.requests += 1

    def drop(self, pending: Pending[T]) -> bool:
        """Withdraw the request's undispatched items. Returns False when there were none left to withdraw."""
        if not pending.queued:
            return False
        pending.queued = False
        self.samples -= pending.size - pending.next
        self.requests -= 1
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        return True

    def oldest(self) -> Pending[T] | None:
        fifo = self._fifo
        while fifo and not fifo[0].queued:
            fifo.popleft()
        return fifo[0] if fifo else None

    def live(self) -> list[Pending[T]]:
        """Every request that still has items waiting, oldest first."""
        return [pending for pending in self._fifo if pending.queued]

    def earliest_deadline(self) -> float | None:
        """The earliest deadline among requests with items waiting; None when none has one. Walks the queue:
        meant for when it holds less than one batch (a full batch goes without asking)."""
        earliest: float | None = None
        for pending in self._fifo:
            deadline = pending.deadline
            if pending.queued and deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    def take(self, limit: int, now: float) -> tuple[list[T], list[Part], list[Pending[T]]]:
        """Cut a batch of at most ``limit`` samples, FIFO.

        Returns the batch's items, the parts they came from, and the requests found expired on the way
        (already dropped from the queue; the caller fails them). Expired requests never reach a batch.
        """
        fifo = self._fifo
        items: list[T] = []
        parts: list[Part] = []
        expired: list[Pending[T]] = []
        room = limit
        while room and fifo:
            pending = fifo[0]
            if not pending.queued:
                fifo.popleft()
                continue
            if pending.deadline is not None and now >= pending.deadline:
                self.drop(pending)
                fifo.popleft()
                expired.append(pending)
                continue
            start = pending.next
            stop = min(pending.size, start + room)
            if start == 0 and stop == pending.size:
                items.extend(pending.items)
            else:
                items.extend(pending.items[start:stop])
            parts.append((pending, start, stop))
            taken = stop - start
            room -= taken
            self.samples -= taken
            pending.next = stop
            if stop == pending.size:
                fifo.popleft()
                pending.queued = False
                self.requests -= 1
                if pending.timer is not None:
                    pending.timer.cancel()
                    pending.timer = None
        return items, parts, expired
