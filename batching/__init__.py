"""Dynamic batching for inference: queue requests, cut batches when an execution slot is free.

Standard library only; generic over the batch function, so it knows nothing of HTTP, ONNX or images.
"""

from .batcher import Batcher, BatchFn, BatchOutcome, BatchRecord
from .config import BatchingConfig
from .errors import BatchResultMismatch, BatcherClosed, BatchingError, DeadlineExceeded, QueueFull
from .stats import BatcherStats, LatencySummary

__all__ = [
    "Batcher",
    "BatchFn",
    "BatchOutcome",
    "BatchRecord",
    "BatchingConfig",
    "BatcherStats",
    "LatencySummary",
    "BatchingError",
    "QueueFull",
    "DeadlineExceeded",
    "BatcherClosed",
    "BatchResultMismatch",
]
