"""A simulated accelerator: a batch of n costs A + B*n milliseconds of sleeping, no ONNX Runtime.

It lets batching be load-tested on machines without a GPU: the device is one serial resource
(a lock), so throughput depends only on how well requests are gathered into batches.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from dataclasses import dataclass

import numpy as np

SIMULATED_MODEL_NAME = "simulated"
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
            raise ValueError(f"simulated cost must look like 'A+B' in ms (e.g. 40+2), not {text!r}")
        return cls(float(match.group(1)), float(match.group(2)))

    def batch_seconds(self, n: int) -> float:
        return (self.fixed_ms + self.per_sample_ms * n) / 1000.0

    def max_throughput(self, max_batch_size: int) -> float:
        """Samples/s when every batch is full: the ceiling a perfect batcher reaches."""
        return max_batch_size / self.batch_seconds(max_batch_size)

    def __str__(self) -> str:
        return f"{self.fixed_ms:g}+{self.per_sample_ms:g} ms"


class SimulatedDevice:
    """The batch function of the simulated model. Logits depend on the image (a hash of its mean value
    picks the winning class) so clients can still tell their answers apart."""

    def __init__(self, cost: CostModel, classes: int = 1000) -> None:
        self.cost = cost
        self.classes = classes
        self._free_at = 0.0  # loop time at which the device finishes the work it has been given

    async def __call__(self, samples: list[np.ndarray]) -> list[np.ndarray]:
        # The device is one serial resource: a batch starts when the previous one ends. Booking
        # it on a timeline (rather than sleeping under a lock) keeps event-loop timer lateness
        # from adding up batch after batch, so throughput reflects batching, not the timer.
        loop = asyncio.get_running_loop()
        start = max(loop.time(), self._free_at)
        self._free_at = start + self.cost.batch_seconds(len(samples))
        await asyncio.sleep(self._free_at - loop.time())
        out = []
        for sample in samples:
            logits = np.zeros(self.classes, dtype=np.float32)
            winner = zlib.crc32(sample[:, ::16, ::16].mean(dtype=np.float32).tobytes()) % self.classes
            logits[winner] = 10.0
            out.append(logits)
        return out
