"""`batchserve worker --metrics-port`: the worker's Prometheus metrics.

The worker has no HTTP API, so this listener (serving/metrics_listener.py) is its only window for
scrapers: the same batch, batcher, cache, fallback, event-writer and drift metrics the server
exports (serving/metrics.py), plus the worker's own message counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batchserve.serving.core import Serving
from batchserve.serving.drift import DriftMonitor
from batchserve.serving.metrics import BatchMetrics, watch_serving


@dataclass(frozen=True)
class MessageCounts:
    """What the worker has done with messages so far, read at scrape time."""

    held: Callable[[], int]
    answered: Callable[[], int]
    handed_back: Callable[[], int]
    deleted: Callable[[], int]
    redelivered_while_held: Callable[[], int]


class WorkerMetrics:
    def __init__(self) -> None:
        # `_created` series double the scrape size and no dashboard here reads them.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.batches = BatchMetrics(self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def watch(self, serving: Serving, drift: DriftMonitor | None, counts: MessageCounts) -> None:
        watch_serving(self.registry, serving, drift)
        self.registry.register(MessageCollector(counts))


class MessageCollector(Collector):
    def __init__(self, counts: MessageCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterable[Metric]:
        counts = self.counts
        yield GaugeMetricFamily("batchserve_worker_held_messages",
                                "Request messages received and not answered or handed back yet.", value=counts.held())
        yield CounterMetricFamily("batchserve_worker_answered_messages",
                                  "Request messages answered (a result stored and a response sent).",
                                  value=counts.answered())
        yield CounterMetricFamily("batchserve_worker_handed_back_messages",
                                  "Request messages handed back to the queue for another try (a failure of the "
                                  "moment: S3 or SQS away, a batch that failed).", value=counts.handed_back())
        yield CounterMetricFamily("batchserve_worker_deleted_messages",
                                  "Answered request messages deleted from the queue.", value=counts.deleted())
        yield CounterMetricFamily("batchserve_worker_redelivered_while_held_messages",
                                  "Request messages SQS delivered again while this worker held them; each was "
                                  "answered once.", value=counts.redelivered_while_held())
