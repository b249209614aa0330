"""Turning outcomes into events: one per sample classification attempt, or one for a request
that failed before any image was read. Never on the critical path: the writer's `put` only enqueues."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batchserve.events.model import Event
from batchserve.events.writer import EventWriter
from batchserve.serving.classifier import Classification, Classified
from batchserve.serving.drift import DriftMonitor
from batchserve.serving.errors import ErrorInfo
from batchserve.serving.fallback import StandIn


@dataclass(frozen=True)
class Caller:
    """Who asked, as the front end that took the request knows it."""

    request_id: str
    user: str
    client_ip: str | None
    user_agent: str | None
    received_at: datetime | None = None  # wall-clock time the request arrived (a queue message carries it)


class Recorder:
    """Builds the events of one request for the event writer (or drops them when events are off)."""

    def __init__(self, writer: EventWriter | None, drift: DriftMonitor | None = None) -> None:
        self.writer = writer
        self.drift = drift  # sees every answer, events on or off (serving/drift.py)

    def record(self, caller: Caller, route: str, outcome: Classification, latency_ms: float) -> None:
        """One event per sample the request attempted, but for samples whose worker recorded them."""
        if self.drift is not None:
            self.drift.observe(outcome)
        if self.writer is None:
            return
        base = _base(caller, route, outcome.model.name, outcome.model.version, latency_ms)
        if isinstance(outcome.model, StandIn):
            base["fallback_for"] = outcome.model.primary
        for result in outcome.results:
            if result.recorded_elsewhere:
                continue
            fields = dict(base, event_id=uuid.uuid4().hex)
            image, decoded = result.image, result.decoded
            if image is not None:
                fields.update(filename=image.filename, content_type=image.content_type, image_bytes=len(image.data))
            if decoded is not None:
                prepared = decoded.prepared
                fields.update(image_sha256=decoded.sha256, width=prepared.width, height=prepared.height,
                              content_type=decoded.image.content_type or f"image/{prepared.format}")
            if isinstance(result, Classified):
                top = result.predictions[0]
                fields.update(class_id=top.class_id, class_label=top.label, score=top.score, status=200,
                              queue_ms=result.queue_ms, inference_ms=result.inference_ms, batch_size=result.batch_size)
                if result.cached is not None:  # never decoded nor batched: what the cache knows of the image
                    scores = result.cached.scores
                    fields.update(cache_hit=True, image_sha256=result.cached.sha256, width=scores.width,
                                  height=scores.height, batch_size=None, queue_ms=None, inference_ms=None,
                                  content_type=fields.get("content_type") or f"image/{scores.format}")
                if result.stand_in is not None:
                    fields.update(model=result.stand_in.name, model_version=result.stand_in.version,
                                  fallback_for=result.stand_in.primary)
            else:
                fields.update(status=result.error.status, error_code=result.error.code)
            self.writer.put(Event(**fields))

    def record_refused(
        self, caller: Caller, route: str, error: ErrorInfo, latency_ms: float,
        model: str | None = None, version: int | None = None,
    ) -> None:
        """A request that failed before any image was read (415, 413, unknown model...): one event."""
        if self.writer is None:
            return
        fields = _base(caller, route, model, version, latency_ms)
        self.writer.put(Event(event_id=uuid.uuid4().hex, status=error.status, error_code=error.code, **fields))


def _base(caller: Caller, route: str, model: str | None, version: int | None, latency_ms: float) -> dict[str, Any]:
    return {
        "request_id": caller.request_id,
        "ts": datetime.now(UTC),
        "route": route,
        "model": model,
        "model_version": version,
        "user": caller.user,
        "client_ip": caller.client_ip,
        "user_agent": caller.user_agent,
        "latency_ms": latency_ms,
    }
