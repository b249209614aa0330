"""An asyncio event loop on a virtual clock, for simulations that must not depend on the machine's speed.

Time moves only when every ready callback has run, and then straight to the next timer: a selector that is
asked to wait adds the wait to the clock instead. Code running between timers takes (next to) no time, so a
run is exactly repeatable. Only for loops whose waits are all timers: waiting on a socket or a thread would
wait on the wall clock as usual.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

__all__ = ["VirtualTimeLoop", "LOOP_TURN_S"]

LOOP_TURN_S = 1e-6
"""Virtual time one turn of the loop takes at least: a wait computed to end a rounding error from now must
still end (on a clock that stood still it would be asked again for ever)."""


class _JumpingSelector:
    """A selector that never waits on a timeout: the time it was asked to wait is added to the clock."""

    def __init__(self, loop: VirtualTimeLoop, real: selectors.BaseSelector) -> None:
        self._loop = loop
        self._real = real

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            return self._real.select(None)  # nothing scheduled: only I/O can wake the loop
        self._loop.now += max(timeout, LOOP_TURN_S)
        return self._real.select(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """``loop.time()`` is the virtual clock; ``asyncio.sleep`` and ``call_later`` run on it."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_JumpingSelector(self, selectors.DefaultSelector()))  # type: ignore[arg-type]

    def time(self) -> float:
        return self.now
