"""A simulated accelerator: a batch of n costs A + B*n milliseconds of sleeping, no ONNX Runtime.

It lets batching be load-tested on machines without a GPU: the device is one serial resource,
so throughput depends only on how well requests are gathered into batches.
"""

from __future__ import annotations

import zlib

import numpy as np

from batchserve.batching.cost import CostModel, SerialDevice

__all__ = ["SIMULATED_MODEL_NAME", "SimulatedDevice"]

SIMULATED_MODEL_NAME = "simulated"


class SimulatedDevice:
    """The batch function of the simulated model. Logits depend on the image (a hash of its mean value
    picks the winning class) so clients can still tell their answers apart."""

    def __init__(self, cost: CostModel, classes: int = 1000) -> None:
        self.device = SerialDevice(cost)
        self.classes = classes

    async def __call__(self, samples: list[np.ndarray]) -> list[np.ndarray]:
        await self.device.run(len(samples))
        out = []
        for sample in samples:
            logits = np.zeros(self.classes, dtype=np.float32)
            winner = zlib.crc32(sample[:, ::16, ::16].mean(dtype=np.float32).tobytes()) % self.classes
            logits[winner] = 10.0
            out.append(logits)
        return out
