"""Dynamic batching for inference: queue requests, cut batches when an execution slot is free.

Standard library only; generic over the batch function, so it knows nothing of HTTP, ONNX or images.
"""

from batchserve.batching.batcher import Batcher, BatchFn, BatchOutcome, BatchRecord
from batchserve.batching.config import BatchingConfig
from batchserve.batching.errors import BatcherClosed, BatchingError, BatchResultMismatch, DeadlineExceeded, QueueFull
from batchserve.batching.fit import CostEstimate
from batchserve.batching.stats import BatcherStats, LatencySummary, nearest_rank

__all__ = [
    "Batcher",
    "BatchFn",
    "BatchOutcome",
    "BatchRecord",
    "BatchingConfig",
    "BatcherStats",
    "CostEstimate",
    "LatencySummary",
    "nearest_rank",
    "BatchingError",
    "QueueFull",
    "DeadlineExceeded",
    "BatcherClosed",
    "BatchResultMismatch",
]
