"""Which model versions each running request has looked up.

A request resolves its model version early (before reading and decoding its body) and submits to
that version's batcher later. When a reload retires the version in between, closing its batcher
at once would fail the request. So every `ModelRegistry.get` made while serving a request leases
the version until the request has answered, and a retired version closes only once no lease is
left. The same list tells the HTTP metrics which model a request used.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Protocol

from litestar.types import ASGIApp, Receive, Scope, Send


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


class LeaseScope:
    """Pure ASGI wrapper: opens a lease list per HTTP request and releases it after the answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Leasable] = []
        token = _held.set(held)
        try:
            await self.app(scope, receive, send)
        finally:
            _held.reset(token)
            for model in held:
                model.release()
