"""Counters and bounded latency windows behind :attr:`Batcher.stats`.

Recording is on the hot path, so it only appends to bounded deques and bumps integers; sorting for
percentiles happens when a snapshot is taken.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from batchserve.batching.fit import CostEstimate

__all__ = ["LatencySummary", "BatcherStats", "StatsRecorder", "nearest_rank"]

WINDOW = 2048
"""Samples kept for percentiles: recent enough to follow load changes, small enough to sort per scrape."""


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """``count`` and ``sum_s`` are totals since start (as a Prometheus summary's); ``p50_s``/``p99_s`` are
    nearest-rank percentiles over the most recent :data:`WINDOW` observations (0 when there are none)."""

    count: int = 0
    sum_s: float = 0.0
    p50_s: float = 0.0
    p99_s: float = 0.0


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """A point-in-time snapshot; every field is a plain value, safe to keep or serialise."""

    queue_depth: int = 0
    """Samples waiting for dispatch."""
    queued_requests: int = 0
    """Requests with samples waiting for dispatch."""
    inflight_batches: int = 0
    batches_total: int = 0
    samples_total: int = 0
    """Samples handed to the batch function, over all batches (failed ones included)."""
    requests_total: int = 0
    """Requests accepted into the queue."""
    rejected_total: int = 0
    """Requests refused with QueueFull."""
    expired_total: int = 0
    """Requests failed with DeadlineExceeded."""
    cancelled_total: int = 0
    """Requests whose caller stopped waiting."""
    failed_batches_total: int = 0
    batch_size_histogram: dict[int, int] = field(default_factory=dict)
    mean_batch_size: float = 0.0
    queue_wait: LatencySummary = LatencySummary()
    """Per request: submit until the start of the last batch that carried its samples."""
    compute: LatencySummary = LatencySummary()
    """Per batch: duration of the batch function call."""
    cost_fixed_ms: float | None = None
    """Learned fixed cost a of a batch (a + b·n), in ms; None until the batch sizes seen let it be fitted."""
    cost_per_sample_ms: float | None = None
    """Learned cost b of each sample in a batch, in ms; None until fitted."""


class _Window:
    __slots__ = ("count", "total", "recent")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=WINDOW)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.recent.append(value)

    def summary(self) -> LatencySummary:
        ordered = sorted(self.recent)
        return LatencySummary(
            count=self.count,
            sum_s=self.total,
            p50_s=nearest_rank(ordered, 0.50),
            p99_s=nearest_rank(ordered, 0.99),
        )


def nearest_rank(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (the definition Postgres' percentile_disc uses);
    ``q`` is a fraction (0.99 for p99), and an empty list gives 0."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


class StatsRecorder:
    """Mutable counters owned by one batcher; only the event loop thread touches them."""

    __slots__ = (
        "batches_total",
        "samples_total",
        "requests_total",
        "rejected_total",
        "expired_total",
        "cancelled_total",
        "failed_batches_total",
        "histogram",
        "queue_wait",
        "compute",
        "_completions",
    )

    def __init__(self) -> None:
        self.batches_total = 0
        self.samples_total = 0
        self.requests_total = 0
        self.rejected_total = 0
        self.expired_total = 0
        self.cancelled_total = 0
        self.failed_batches_total = 0
        self.histogram: dict[int, int] = {}
        self.queue_wait = _Window()
        self.compute = _Window()
        # (finish time, samples) of recent batches: the throughput estimate behind Retry-After.
        self._completions: deque[tuple[float, int]] = deque(maxlen=64)

    def batch_done(self, size: int, compute_s: float, finished_at: float, ok: bool) -> None:
        self.batches_total += 1
        self.samples_total += size
        self.histogram[size] = self.histogram.get(size, 0) + 1
        self.compute.add(compute_s)
        self._completions.append((finished_at, size))
        if not ok:
            self.failed_batches_total += 1

    def throughput(self, now: float) -> float | None:
        """Samples per second over recent batches, or None before there is anything to go on."""
        if not self._completions:
            return None
        first_at = self._completions[0][0]
        samples = sum(size for _, size in self._completions)
        # A single batch (or a burst finishing together) spans no time: fall back on compute durations so the
        # estimate is never a division by zero or absurdly high.
        span = max(now - first_at, self.compute.total / max(self.compute.count, 1))
        return samples / span if span > 0 else None

    def snapshot(
        self,
        *,
        queue_depth: int,
        queued_requests: int,
        inflight_batches: int,
        cost: CostEstimate | None = None,
    ) -> BatcherStats:
        return BatcherStats(
            queue_depth=queue_depth,
            queued_requests=queued_requests,
            inflight_batches=inflight_batches,
            batches_total=self.batches_total,
            samples_total=self.samples_total,
            requests_total=self.requests_total,
            rejected_total=self.rejected_total,
            expired_total=self.expired_total,
            cancelled_total=self.cancelled_total,
            failed_batches_total=self.failed_batches_total,
            batch_size_histogram=dict(sorted(self.histogram.items())),
            mean_batch_size=self.samples_total / self.batches_total if self.batches_total else 0.0,
            queue_wait=self.queue_wait.summary(),
            compute=self.compute.summary(),
            cost_fixed_ms=None if cost is None else cost.fixed_ms,
            cost_per_sample_ms=None if cost is None else cost.per_sample_ms,
        )
