"""Fake batch functions for the batcher's tests: a cost model a + b·n, and a gate the test opens by hand."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CostModel:
    """Async fake accelerator: a batch of n costs ``a + b·n`` seconds (asyncio.sleep) and doubles each item."""

    a: float = 0.002
    b: float = 0.0002
    calls: list[list[Any]] = field(default_factory=list)
    running: int = 0
    max_running: int = 0

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.calls.append(list(items))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.a + self.b * len(items))
        finally:
            self.running -= 1
        return [x * 2 for x in items]

    @property
    def sizes(self) -> list[int]:
        return [len(call) for call in self.calls]


@dataclass
class SyncCostModel:
    """The same cost model as a blocking function (time.sleep), the way a model runtime is called."""

    a: float = 0.002
    b: float = 0.0002
    calls: list[list[Any]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, items: list[Any]) -> list[Any]:
        with self._lock:
            self.calls.append(list(items))
            self.threads.add(threading.current_thread().name)
        time.sleep(self.a + self.b * len(items))
        return [x * 2 for x in items]


class GatedModel:
    """Each batch blocks until the test opens the gate, so tests control exactly when slots free up.

    ``transform`` maps the batch's items to its results (to inject failures or wrong counts).
    """

    def __init__(self, transform: Callable[[list[Any]], list[Any]] | None = None) -> None:
        self.gate = asyncio.Event()
        self.calls: list[list[Any]] = []
        self.running = 0
        self.max_running = 0
        self.finished = 0
        self._transform = transform or (lambda items: [x * 2 for x in items])

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.calls.append(list(items))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
            self.finished += 1
        return self._transform(list(items))

    def open(self) -> None:
        self.gate.set()

    @property
    def seen(self) -> list[Any]:
        return [item for call in self.calls for item in call]


async def settle(turns: int = 20) -> None:
    """Let every ready callback and task run: a fixed number of loop turns, no wall-clock waiting."""
    for _ in range(turns):
        await asyncio.sleep(0)


class VirtualClock:
    """A clock the test moves by hand (the batcher measures and compares deadlines with it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
