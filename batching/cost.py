"""The a + b·n cost model of an accelerator, and a serial device that follows it.

Used to load-test batching without a GPU (the server's simulated model) and to state the
ceiling a perfect batcher reaches (benchmarks): with every batch full at k samples, a serial
device delivers k / (a + b·k) samples per second.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass

_COST = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:ms)?\s*\+\s*(\d+(?:\.\d+)?)\s*(?:ms)?\s*$")


@dataclass(frozen=True)
class CostModel:
    fixed_ms: float
    per_sample_ms: float

    @classmethod
    def parse(cls, text: str) -> CostModel:
        """'8+0.25' or '8ms+0.25ms' -> CostModel(8, 0.25)."""
        match = _COST.match(text)
        if not match:
            raise ValueError(f"cost must look like 'A+B' in ms (e.g. 40+2), not {text!r}")
        fixed, per = float(match.group(1)), float(match.group(2))
        if not (math.isfinite(fixed) and math.isfinite(per)) or fixed + per <= 0:
            raise ValueError(f"cost terms A+B must be finite and not both 0, not {text!r}")
        return cls(fixed, per)

    def batch_seconds(self, n: int) -> float:
        return (self.fixed_ms + self.per_sample_ms * n) / 1000.0

    def max_throughput(self, batch_size: int) -> float:
        """Samples/s when every batch holds `batch_size` samples, back to back."""
        return batch_size / self.batch_seconds(batch_size)

    def __str__(self) -> str:
        return f"{self.fixed_ms:g}+{self.per_sample_ms:g} ms"


class SerialDevice:
    """One accelerator: a batch starts when the previous one ends.

    Batches are booked on a timeline of loop time rather than slept under a lock, so event-loop
    timer lateness does not add up batch after batch: throughput then reflects the batching,
    not the timer.
    """

    def __init__(self, cost: CostModel) -> None:
        self.cost = cost
        self.busy_s = 0.0
        self.free_at = 0.0  # loop time at which the device finishes the work it has been given

    async def run(self, n: int) -> None:
        loop = asyncio.get_running_loop()
        duration = self.cost.batch_seconds(n)
        self.free_at = max(loop.time(), self.free_at) + duration
        self.busy_s += duration
        done: asyncio.Future[None] = loop.create_future()
        loop.call_at(self.free_at, _resolve, done)
        await done


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
