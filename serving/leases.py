"""Which model versions each running request holds.

A request resolves its model version early (before reading and decoding its body) and submits to
that version's batcher later. When a reload retires the version in between, closing its batcher
at once would fail the request. So a request looks its model up with `ModelRegistry.lease`, which
holds the version until the request's `lease_scope` ends, and a retired version closes only once
no lease is left. The same list tells the HTTP metrics which model a request used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class Leasable(Protocol):
    name: str
    version: int

    def acquire(self) -> None: ...

    def release(self) -> None: ...


_held: ContextVar[list[Leasable] | None] = ContextVar("model_leases", default=None)


def lease(model: Leasable) -> None:
    """Hold `model` until the current request ends (a no-op outside a request, e.g. in scripts)."""
    held = _held.get()
    if held is not None and not any(m is model for m in held):
        model.acquire()
        held.append(model)


def leased() -> list[Leasable]:
    """The model versions the current request has looked up so far."""
    return list(_held.get() or ())


class LeaseCounter:
    """Counts a model version's leases; `wait_idle` returns once none is left."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def acquire(self) -> None:
        self.count += 1
        self._idle.clear()

    def release(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.count = 0
            self._idle.set()

    async def wait_idle(self, timeout: float | None) -> bool:
        """True when idle; False when `timeout` passed with leases still held."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


@contextmanager
def lease_scope() -> Iterator[None]:
    """One request's lifetime: every version leased inside it is released when it ends."""
    held: list[Leasable] = []
    token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(token)
        for model in held:
            model.release()
