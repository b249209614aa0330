"""The event record: one row per image classification attempt."""

from __future__ import annotations

from datetime import datetime

import msgspec

__all__ = ["Event"]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One classification attempt, as the server saw it.

    A multipart request with five files yields five events sharing ``request_id``; a request
    that fails before any image is read yields one event without image fields.  The struct is
    built on the request path, so it stays a plain record: validation and PII policy happen
    later, in the background flusher (see ``events.rows`` and ``events.pii``).
    """

    event_id: str  # uuid4 (hex or canonical); unique, so replays are idempotent
    request_id: str
    ts: datetime  # UTC, microseconds
    route: str  # "v1" | "v2" | "ui"
    model: str | None = None
    model_version: int | None = None
    user: str = "anonymous"  # already a key id/hash, never a raw key
    client_ip: str | None = None  # raw; the writer applies the PII mode
    user_agent: str | None = None
    image_sha256: str | None = None
    filename: str | None = None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    image_bytes: int | None = None
    class_id: int | None = None  # top-1
    class_label: str | None = None
    score: float | None = None  # top-1 probability
    status: int = 200
    error_code: str | None = None  # null when OK
    latency_ms: float | None = None
    queue_ms: float | None = None
    inference_ms: float | None = None
    batch_size: int | None = None
    cache_hit: bool = False  # answered from the result cache: never decoded nor batched
    fallback_for: str | None = None  # the model asked for, when its fallback (``model``) answered
