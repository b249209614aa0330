"""Prometheus metrics: one CollectorRegistry per app (so tests can build several apps), fed by
three sources.

- HTTP: a pure ASGI wrapper counts and times every answer by route template (never the raw
  path: unknown paths share the label "other", so clients cannot grow the label set).
- Batches and the serving core's state: serving/metrics.py (the queue worker exports the same).
- The server's own state: readiness and the admission gate, read at scrape time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from batchserve.batching import BatchRecord
from batchserve.server.http_middleware import HttpMiddleware
from batchserve.serving.drift import DriftMonitor
from batchserve.serving.leases import leased
from batchserve.serving.metrics import LATENCY_BUCKETS, BatchMetrics, watch_serving

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from batchserve.server.state import AppState

log = logging.getLogger("batchserve.metrics")

OTHER_ROUTE = "other"
# Any method string can reach the server; labels keep only the standard ones.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    def __init__(self) -> None:
        # `_created` series double the scrape size and no dashboard here reads them.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "batchserve_http_requests", "HTTP requests answered, by route template, model and status.",
            ["method", "route", "model", "status"], registry=r,
        )
        self.http_duration = Histogram(
            "batchserve_http_request_duration_seconds", "Time from request start to the last byte of the answer.",
            ["method", "route", "model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self._http_series: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}
        self.batch_metrics = BatchMetrics(r)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def observe_batch(self, model: str, version: int, record: BatchRecord) -> None:
        """The ModelRegistry's on_batch hook: called once per batch, successful or not."""
        self.batch_metrics.observe_batch(model, version, record)

    def watch(self, state: AppState) -> None:
        """Expose the live state of `state` (batchers, models, event writer, readiness, admission)
        at scrape time."""
        if state.config.drift.drift and state.serving.recorder.drift is None:
            # Drift is only ever read from here, so the monitor starts where it is exported; the
            # recorder, which sees every answer, feeds it.
            state.serving.recorder.drift = DriftMonitor(state.config.drift)
        watch_serving(self.registry, state.serving, state.serving.recorder.drift)
        self.registry.register(StateCollector(state))

    def observe_http(self, method: str, route: str, model: str, status: int, seconds: float) -> None:
        key = (method, route, model, status)
        series = self._http_series.get(key)
        if series is None:
            # Finding a labelled series costs more than updating it (~3 µs of the ~4.5): once per label set.
            series = self._http_series[key] = (self.http_requests.labels(method, route, model, str(status)),
                                               self.http_duration.labels(method, route, model))
        series[0].inc()
        series[1].observe(seconds)

    def observe_answer(self, scope: Scope, status: int, started: float) -> None:
        """One HTTP answer, labelled as routing saw its request; `started`: its `time.perf_counter()`."""
        # Routing fills in the template; a path that matched no route never gets one.
        route = scope.get("path_template") if scope.get("route_handler") is not None else None
        models = leased()
        method = scope.get("method", "GET")
        self.observe_http(
            method if method in METHODS else "OTHER",
            route or OTHER_ROUTE,
            models[0].name if models else "",
            status,
            time.perf_counter() - started,
        )

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body and its content type, negotiated (OpenMetrics when the scraper asks)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class StateCollector(Collector):
    """What only the HTTP server has: its readiness and its admission gate."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def collect(self) -> Iterable[Metric]:
        # A scrape must never fail because one source misbehaves: log it and serve the rest.
        for part in (self._ready, self._admission):
            try:
                yield from part()
            except Exception:
                log.exception("collecting %s metrics failed", part.__name__.strip("_"))

    def _ready(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("batchserve_server_ready", "1 when /readyz answers 200.",
                                value=1.0 if self.state.ready else 0.0)

    def _admission(self) -> Iterator[Metric]:
        gate, decodes = self.state.admission, self.state.serving.classifier.pending_decodes
        refused = CounterMetricFamily(
            "batchserve_admission_refused", "Classification requests refused (503 overloaded) before any work.",
            labels=["reason"],
        )
        refused.add_metric(["queue_full"], gate.refused_queue_full)
        refused.add_metric(["max_concurrent_requests"], gate.requests.refused_total)
        refused.add_metric(["max_pending_decodes"], decodes.refused_total)
        yield refused
        yield CounterMetricFamily("batchserve_admission_refusals_delayed",
                                  "Refusals answered late because clients retried faster than the refusal pace.",
                                  value=gate.pacer.delayed_total)
        yield CounterMetricFamily("batchserve_admission_refusals_answered_early",
                                  "Refusals the HTTP protocol answered before the app ran (--early-refusal).",
                                  value=gate.answered_early)
        yield CounterMetricFamily("batchserve_admission_body_timeouts",
                                  "Requests answered 408 because their body was not complete in time.",
                                  value=gate.body_timeouts)
        yield GaugeMetricFamily("batchserve_admission_inflight_requests",
                                "Classification requests admitted and not answered yet.", value=gate.requests.in_use)
        yield GaugeMetricFamily("batchserve_admission_pending_decodes",
                                "Images waiting for or in a decode thread.", value=decodes.in_use)



class HttpMetricsMiddleware(HttpMiddleware):
    """Around the whole app (outside routing), so 404s and 405s count too."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.metrics.observe_answer(scope, status, started)
