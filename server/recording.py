"""Turning answers into events: one per image classification attempt, or one for a request
that failed before any image was read. Never on the critical path: `put` only enqueues."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from batchserve.events.model import Event
from batchserve.server.errors import ErrorInfo
from batchserve.server.inference import Classified, Failed, Prediction
from batchserve.server.request_context import Caller


class Recorder:
    """Wraps the event writer (or nothing, when events are off) for the route handlers."""

    def __init__(self, writer) -> None:  # events.writer.EventWriter | None
        self.writer = writer

    def _base(self, caller: Caller, route: str, model: str | None, version: int | None, latency_ms: float) -> dict:
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

    def results(
        self, caller: Caller, route: str, model: str, version: int,
        results: Sequence[Classified | Failed], latency_ms: float,
    ) -> None:
        if self.writer is None:
            return
        base = self._base(caller, route, model, version, latency_ms)
        for result in results:
            image = result.image
            decoded = result.decoded
            fields = dict(base, event_id=uuid.uuid4().hex)
            if image is not None:
                fields.update(filename=image.filename, content_type=image.content_type, image_bytes=len(image.data))
            if decoded is not None:
                fields.update(
                    image_sha256=decoded.sha256, width=decoded.prepared.width, height=decoded.prepared.height,
                    content_type=(image.content_type if image and image.content_type else None)
                    or f"image/{decoded.prepared.format}",
                )
            if isinstance(result, Classified):
                top = result.predictions[0]
                fields.update(
                    class_id=top.class_id, class_label=top.label, score=top.score, status=200,
                    queue_ms=result.queue_ms, inference_ms=result.inference_ms, batch_size=result.batch_size,
                )
            else:
                fields.update(status=result.error.status, error_code=result.error.code)
            self.writer.put(Event(**fields))

    def failure(
        self, caller: Caller, route: str, error: ErrorInfo, latency_ms: float,
        model: str | None = None, version: int | None = None,
    ) -> None:
        """A request that failed before any image was read (415, 413, unknown model...)."""
        if self.writer is None:
            return
        fields = self._base(caller, route, model, version, latency_ms)
        self.writer.put(Event(event_id=uuid.uuid4().hex, status=error.status, error_code=error.code, **fields))

    def tensor_results(
        self, caller: Caller, route: str, model: str, version: int, top1: Sequence[Prediction],
        latency_ms: float, *, queue_ms: float, inference_ms: float, batch_size: int,
    ) -> None:
        """Samples sent as preprocessed tensors (V2): one event each, with no image fields."""
        if self.writer is None:
            return
        base = self._base(caller, route, model, version, latency_ms)
        for prediction in top1:
            self.writer.put(Event(
                event_id=uuid.uuid4().hex, class_id=prediction.class_id, class_label=prediction.label,
                score=prediction.score, status=200, queue_ms=queue_ms, inference_ms=inference_ms,
                batch_size=batch_size, **base,
            ))

    def tensor_failure(
        self, caller: Caller, route: str, model: str, version: int, count: int, error: ErrorInfo, latency_ms: float,
    ) -> None:
        """Tensor samples that reached the batcher and failed there (queue full, deadline...)."""
        if self.writer is None:
            return
        base = self._base(caller, route, model, version, latency_ms)
        for _ in range(count):
            self.writer.put(Event(event_id=uuid.uuid4().hex, status=error.status, error_code=error.code, **base))
