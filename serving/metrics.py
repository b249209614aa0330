"""Prometheus metrics of a serving core, shared by the HTTP server and the queue worker.

- Batches: `BatchMetrics.observe_batch` is the registry's `on_batch` hook (size, compute time, wait).
- State: `ServingCollector` reads the batchers', the event writer's, the cache's and the fallbacks'
  own counters at scrape time, so gauges such as queue depth are never stale and cost nothing
  between scrapes; `DriftCollector` computes each model's drift figures the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batchserve.batching import BatchRecord
from batchserve.serving.cache_memory import MemoryStore
from batchserve.serving.drift import DriftMonitor

if TYPE_CHECKING:
    from batchserve.serving.core import Serving

log = logging.getLogger("batchserve.metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class BatchMetrics:
    """Per-batch histograms and counts, fed by the model registry's `on_batch` hook."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.queue_wait = Histogram(
            "batchserve_batch_queue_wait_seconds",
            "Per batch: how long its longest-waiting request sat in the queue before the batch started.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute = Histogram(
            "batchserve_batch_compute_seconds", "Per batch: duration of the model call.",
            ["model", "version"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "batchserve_batch_size", "Samples per batch.", ["model", "version"], buckets=BATCH_SIZE_BUCKETS, registry=r,
        )
        self.batches = Counter(
            "batchserve_batches",
            "Batches run, by outcome (ok or failed).",
            ["model", "version", "outcome"],
            registry=r,
        )
    def observe_batch(self, model: str, version: int, record: BatchRecord) -> None:
        """The ModelRegistry's on_batch hook: called once per batch, successful or not."""
        labels = (model, str(version))
        self.batch_size.labels(*labels).observe(record.size)
        self.compute.labels(*labels).observe(record.compute_s)
        self.queue_wait.labels(*labels).observe(record.queue_s_max)
        self.batches.labels(*labels, "ok" if record.ok else "failed").inc()


def watch_serving(registry: CollectorRegistry, serving: Serving, drift: DriftMonitor | None) -> None:
    """Register the scrape-time collectors of `serving` (and of its drift monitor, when one runs)."""
    registry.register(ServingCollector(serving))
    if drift is not None:
        registry.register(DriftCollector(drift, serving))


class ServingCollector(Collector):
    """The live state of a serving core, read at scrape time: batchers, models, the event writer,
    the result cache and fallbacks."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving

    def collect(self) -> Iterable[Metric]:
        # A scrape must never fail because one source misbehaves: log it and serve the rest.
        for part in (self._batchers, self._models, self._events, self._cache, self._fallbacks):
            try:
                yield from part()
            except Exception:
                log.exception("collecting %s metrics failed", part.__name__.strip("_"))

    def _batchers(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        depth = GaugeMetricFamily("batchserve_queue_depth", "Samples waiting in the batcher queue.", labels=labels)
        queued = GaugeMetricFamily("batchserve_queued_requests", "Requests with samples waiting in the queue.",
                                   labels=labels)
        inflight = GaugeMetricFamily("batchserve_inflight_batches", "Batches running now.", labels=labels)
        accepted = CounterMetricFamily("batchserve_batcher_requests", "Requests accepted into the queue.",
                                       labels=labels)
        rejected = CounterMetricFamily("batchserve_batcher_rejected", "Requests refused because the queue was full.",
                                       labels=labels)
        expired = CounterMetricFamily("batchserve_batcher_expired", "Requests that missed their deadline.",
                                      labels=labels)
        cost_fixed = GaugeMetricFamily("batchserve_batch_cost_fixed_ms", "Learned fixed cost a of a batch (a + b*n "
                                       "fitted to recent batches), in ms; absent until batch sizes varied.",
                                       labels=labels)
        cost_per_image = GaugeMetricFamily("batchserve_batch_cost_per_image_ms", "Learned cost b of each image in "
                                           "a batch (a + b*n fitted to recent batches), in ms.", labels=labels)
        for model in self.serving.registry.loaded():
            stats = model.batcher.stats
            values = [model.name, str(model.version)]
            depth.add_metric(values, stats.queue_depth)
            queued.add_metric(values, stats.queued_requests)
            inflight.add_metric(values, stats.inflight_batches)
            accepted.add_metric(values, stats.requests_total)
            rejected.add_metric(values, stats.rejected_total)
            expired.add_metric(values, stats.expired_total)
            if stats.cost_fixed_ms is not None and stats.cost_per_sample_ms is not None:
                cost_fixed.add_metric(values, stats.cost_fixed_ms)
                cost_per_image.add_metric(values, stats.cost_per_sample_ms)
        yield from (depth, queued, inflight, accepted, rejected, expired, cost_fixed, cost_per_image)

    def _models(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "batchserve_model_ready", "1 when the model version is loaded and takes requests, 0 when only on disk.",
            labels=["model", "version"],
        )
        seen = set()
        for model in self.serving.registry.loaded():
            seen.add((model.name, str(model.version)))
            ready.add_metric([model.name, str(model.version)], 0.0 if model.batcher.closing else 1.0)
        for row in self.serving.registry.repository_index():
            key = (row["name"], row["version"])
            if row["version"] and key not in seen:
                ready.add_metric(list(key), 0.0)
        yield ready

    def _events(self) -> Iterator[Metric]:
        writer = self.serving.writer
        if writer is None:
            return
        stats = writer.stats
        for name, doc, value in (
            ("written", "Events committed to the store from memory.", stats.written_total),
            ("spilled", "Events written to the spill journal while the store was unreachable.", stats.spilled_total),
            ("replayed", "Journaled events later committed to the store.", stats.replayed_total),
            ("dropped", "Events lost with no copy kept (a subset of batchserve_events_lost).", stats.dropped_total),
            ("flush_errors", "Failed writes to the event store.", stats.flush_errors_total),
        ):
            yield CounterMetricFamily(f"batchserve_events_{name}", doc, value=value)
        lost = CounterMetricFamily("batchserve_events_lost", "Events that will not reach the store, by reason "
                                   "(rejected, unprocessable, corrupt_line, torn_line keep a dead-letter copy).",
                                   labels=["reason"])
        for reason, count in stats.lost.items():
            lost.add_metric([reason], count)
        yield lost
        yield GaugeMetricFamily("batchserve_events_buffered", "Events in memory waiting to be written.",
                                value=stats.buffered)
        yield GaugeMetricFamily("batchserve_events_journal_bytes", "Size of the spill journal.",
                                value=stats.journal_bytes)
        yield GaugeMetricFamily("batchserve_events_store_healthy", "1 when the last event store operation succeeded.",
                                value=1.0 if stats.healthy else 0.0)


    def _cache(self) -> Iterator[Metric]:
        cache = self.serving.cache
        if cache is None:
            return
        stats = cache.stats
        hits = CounterMetricFamily("batchserve_cache_hits", "Images answered from the result cache.", labels=["model"])
        misses = CounterMetricFamily("batchserve_cache_misses", "Images looked up in the result cache and not found "
                                     "(or not looked up: the cache's store unavailable).", labels=["model"])
        for family, counts in ((hits, stats.hits), (misses, stats.misses)):
            for model, count in counts.items():
                family.add_metric([model], count)
        evictions = CounterMetricFamily("batchserve_cache_evictions", "Cached answers removed, by reason (capacity, "
                                        "expired, version: its model version unloaded or replaced).", labels=["reason"])
        for reason, count in stats.evictions.items():
            evictions.add_metric([reason], count)
        yield from (hits, misses, evictions)
        yield CounterMetricFamily("batchserve_cache_store_errors", "Failed or timed-out calls to the cache's Redis "
                                  "(each leaves Redis alone for a while: images are classified as misses).",
                                  value=stats.store_errors)
        yield CounterMetricFamily("batchserve_cache_writes_skipped", "Answers not stored because too many writes "
                                  "to the cache's Redis were pending.", value=stats.writes_skipped)
        store = cache.store
        if isinstance(store, MemoryStore):
            yield GaugeMetricFamily("batchserve_cache_bytes", "Bytes held by the memory result cache "
                                    "(at most --cache-max-bytes).", value=store.bytes)
            yield GaugeMetricFamily("batchserve_cache_entries", "Answers held by the memory result cache.",
                                    value=len(store))

    def _fallbacks(self) -> Iterator[Metric]:
        stats = self.serving.fallbacks.stats
        answered = CounterMetricFamily(
            "batchserve_fallbacks", "Images a fallback model answered instead of the model asked for, by reason "
            "(unavailable: not loaded; queue_full; batch_failed).", labels=["model", "fallback", "reason"])
        for (model, fallback, reason), count in stats.answered.items():
            answered.add_metric([model, fallback, reason], count)
        unanswered = CounterMetricFamily(
            "batchserve_fallbacks_unanswered", "Images (or requests refused before any image was read) whose model "
            "could not answer and whose fallback could not either: the model's error was the answer.",
            labels=["model", "reason"])
        for (model, reason), count in stats.unanswered.items():
            unanswered.add_metric([model, reason], count)
        # Labelled families without a sample say nothing: they appear with the first fallback.
        yield from (family for family in (answered, unanswered) if family.samples)



class DriftCollector(Collector):
    """Each loaded model's drift figures (serving/drift.py), computed from its running counts at
    scrape time: the request path only ever updates counts."""

    def __init__(self, monitor: DriftMonitor, serving: Serving) -> None:
        self.monitor = monitor
        self.serving = serving

    def collect(self) -> Iterable[Metric]:
        try:
            yield from self._drift()
        except Exception:
            log.exception("collecting drift metrics failed")

    def _drift(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str, *extra: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["model", *extra])

        psi = gauge("batchserve_drift_psi", "Population stability index of the top-1 class mix in the rolling window "
                    "against the reference (the reference's most frequent classes, the rest in one bin); "
                    "present once the reference is complete and the window full.")
        confidence = gauge("batchserve_mean_confidence", "Mean top-1 score in the rolling window.")
        low = gauge("batchserve_low_confidence_ratio",
                    "Share of the rolling window's answers whose top-1 score is under --drift-confidence-threshold.")
        window = gauge("batchserve_drift_window_answers", "Answers in the rolling window (at most --drift-window).")
        reference = gauge("batchserve_drift_reference_answers",
                          "Answers in the reference (still growing while the first answers after start are counted).")
        reference_confidence = gauge("batchserve_drift_reference_mean_confidence",
                                     "Mean top-1 score over the reference.")
        brightness = gauge("batchserve_drift_input_brightness",
                           "Mean pixel value (0-255) of the crops the model saw in the rolling window.")
        sides = gauge("batchserve_drift_input_short_side_ratio",
                      "Share of the rolling window's images whose shorter side falls in each bucket (pixels).",
                      "short_side")
        size_psi = gauge("batchserve_drift_input_size_psi",
                         "Population stability index of the image-size buckets in the window against the reference.")
        models = {model.name for model in self.serving.registry.loaded()}
        for snap in self.monitor.snapshots(models):
            labels = [snap.model]
            window.add_metric(labels, snap.window_answers)
            reference.add_metric(labels, snap.reference_answers)
            for family, value in ((psi, snap.psi), (confidence, snap.mean_confidence),
                                  (low, snap.low_confidence_ratio),
                                  (reference_confidence, snap.reference_mean_confidence),
                                  (brightness, snap.brightness_mean), (size_psi, snap.size_psi)):
                if value is not None:
                    family.add_metric(labels, value)
            for bucket, ratio in snap.short_side_ratios.items():
                sides.add_metric([snap.model, bucket], ratio)
        yield from (psi, confidence, low, window, reference, reference_confidence, brightness, sides, size_psi)

