"""From events to star-schema rows: sanitising, dimension natural keys, fact records.

Dialect-neutral: both stores receive the same ``PreparedBatch`` and only convert values to
their driver's types.  Sanitising here, in the background flusher, is what keeps one malformed
event from poisoning a whole batch (a batch the store rejects would be spilled and replayed
forever): every value that reaches a store fits its column.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import msgspec

from batchserve.events.model import Event
from batchserve.events.ratelog import RateLimitedLog

__all__ = [
    "DIMENSIONS",
    "ClassRow",
    "FactRow",
    "ImageRow",
    "PreparedBatch",
    "TimeRow",
    "UserRow",
    "canonical_event_id",
    "natural_key",
    "prepare",
]

log = logging.getLogger(__name__)
_warn = RateLimitedLog(log, logging.WARNING)

DIMENSIONS = ("time", "user", "image", "class")

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_INT16 = (-(2**15), 2**15 - 1)
# Derived ids for malformed event ids stay deterministic, so a replay still deduplicates.
_EVENT_ID_NAMESPACE = uuid.UUID("6f1d3c1e-8a52-4b0e-9a57-6b0e5f0c2d11")

# Caps keep a hostile header or filename from bloating dimensions (and btree entries).
_MAX_LEN = {
    "request_id": 128,
    "route": 32,
    "model": 128,
    "user": 256,
    "client_ip": 64,
    "user_agent": 512,
    "image_sha256": 128,
    "filename": 255,
    "content_type": 128,
    "class_label": 256,
    "error_code": 64,
    "fallback_for": 128,
}


@dataclass(frozen=True, slots=True)
class TimeRow:
    minute_ts: datetime  # natural key
    hour_ts: datetime
    day_date: date
    hour: int
    day: int
    weekday: int  # ISO: Monday 1 .. Sunday 7
    month: int
    year: int


@dataclass(frozen=True, slots=True)
class UserRow:
    nk: bytes
    user_name: str
    client_ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class ImageRow:
    nk: bytes
    sha256: str | None
    filename: str | None
    content_type: str | None
    width: int | None
    height: int | None
    byte_size: int | None


@dataclass(frozen=True, slots=True)
class ClassRow:
    nk: bytes
    model_name: str
    class_id: int
    class_name: str | None


@dataclass(frozen=True, slots=True)
class FactRow:
    event_id: str  # canonical hyphenated UUID
    request_id: str
    event_ts: datetime  # aware UTC
    time_nk: datetime
    user_nk: bytes
    image_nk: bytes | None
    class_nk: bytes | None
    route: str
    model_name: str | None
    model_version: int | None
    score: float | None
    status: int
    error_code: str | None
    latency_ms: float | None
    queue_ms: float | None
    inference_ms: float | None
    batch_size: int | None
    cache_hit: bool = False
    fallback_for: str | None = None
    request_count: int = 1


@dataclass(slots=True)
class PreparedBatch:
    """Unique dimension rows by natural key, and the facts that point at them."""

    times: dict[datetime, TimeRow] = field(default_factory=dict)
    users: dict[bytes, UserRow] = field(default_factory=dict)
    images: dict[bytes, ImageRow] = field(default_factory=dict)
    classes: dict[bytes, ClassRow] = field(default_factory=dict)
    facts: list[FactRow] = field(default_factory=list)

    def dim(self, name: str) -> dict[Any, Any]:
        by_name: dict[str, dict[Any, Any]] = {
            "time": self.times,
            "user": self.users,
            "image": self.images,
            "class": self.classes,
        }
        return by_name[name]


def natural_key(*parts: object) -> bytes:
    """A 16-byte digest of a dimension's natural key.

    One NOT NULL column carries uniqueness in both dialects: UNIQUE over nullable columns would
    treat NULLs as distinct (so "no user agent" would duplicate rows), and a digest keeps index
    entries small whatever the length of a user agent or filename.
    """
    return hashlib.blake2b(msgspec.msgpack.encode(parts), digest_size=16).digest()


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX_UUID = re.compile(r"[0-9a-f]{32}")


def canonical_event_id(raw: object) -> str:
    # Fast paths for what the server sends (uuid4().hex or str(uuid4())): prepare() runs per
    # event, and uuid.UUID() costs several times more than a regex match.
    if type(raw) is str:
        if len(raw) == 36 and _CANONICAL_UUID.fullmatch(raw):
            return raw
        if len(raw) == 32 and _HEX_UUID.fullmatch(raw):
            return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
    if isinstance(raw, uuid.UUID):
        return str(raw)
    text = str(raw)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        _warn("event_id %r is not a UUID; storing a UUID derived from it", text[:80])
        return str(uuid.uuid5(_EVENT_ID_NAMESPACE, text))


def _text(name: str, value: object) -> str | None:
    if value is None:
        return None
    limit = _MAX_LEN[name]
    if type(value) is str and len(value) <= limit and "\x00" not in value:
        return value
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:  # Postgres text cannot hold NUL
        text = text.replace("\x00", "")
    return text[:limit]


def _int(name: str, value: object, bounds: tuple[int, int] = _INT32) -> int | None:
    if value is None:
        return None
    if type(value) is int and bounds[0] <= value <= bounds[1]:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        _warn("event field %s=%r is not a representable integer; stored as NULL", name, value)
        return None
    return int(value)


def _float(name: str, value: object) -> float | None:
    if value is None:
        return None
    if type(value) is float and math.isfinite(value):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _warn("event field %s=%r is not a finite number; stored as NULL", name, value)
        return None
    return float(value)


def _timestamp(value: object) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is UTC:
            return value
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    _warn("event ts %r is not a datetime; using the time it was flushed", value)
    return datetime.now(UTC)


def _time_row(ts: datetime) -> TimeRow:
    minute = ts.replace(second=0, microsecond=0)
    return TimeRow(
        minute_ts=minute,
        hour_ts=minute.replace(minute=0),
        day_date=minute.date(),
        hour=minute.hour,
        day=minute.day,
        weekday=minute.isoweekday(),
        month=minute.month,
        year=minute.year,
    )


def prepare(events: list[Event] | tuple[Event, ...]) -> PreparedBatch:
    """Sanitise ``events`` and split them into unique dimension rows and fact rows.

    Events repeating an ``event_id`` already seen in the batch are left out (the store would
    ignore them anyway; leaving them out keeps counts exact).  CPU-bound (tens of microseconds
    per event): callers run it off the event loop.
    """
    batch = PreparedBatch()
    seen: set[str] = set()
    # Within a batch most events share a minute, a user and a class: derive each row once.
    minutes: dict[tuple[int, int, int, int, int], TimeRow] = {}
    users: dict[tuple[str, str | None, str | None], bytes] = {}
    images: dict[tuple[Any, ...], bytes] = {}
    classes: dict[tuple[str, int, str | None], bytes] = {}
    for ev in events:
        event_id = canonical_event_id(ev.event_id)
        if event_id in seen:
            continue
        seen.add(event_id)
        ts = _timestamp(ev.ts)
        minute_key = (ts.year, ts.month, ts.day, ts.hour, ts.minute)
        time_row = minutes.get(minute_key)
        if time_row is None:
            time_row = minutes[minute_key] = _time_row(ts)
            batch.times[time_row.minute_ts] = time_row

        user_name = _text("user", ev.user) or "anonymous"
        client_ip = _text("client_ip", ev.client_ip)
        user_agent = _text("user_agent", ev.user_agent)
        user_nat = (user_name, client_ip, user_agent)
        user_nk = users.get(user_nat)
        if user_nk is None:
            user_nk = users[user_nat] = natural_key(*user_nat)
            batch.users[user_nk] = UserRow(user_nk, user_name, client_ip, user_agent)

        image = (
            _text("image_sha256", ev.image_sha256),
            _text("filename", ev.filename),
            _text("content_type", ev.content_type),
            _int("width", ev.width),
            _int("height", ev.height),
            _int("image_bytes", ev.image_bytes, _INT64),
        )
        image_nk = None
        if image != _NO_IMAGE:
            image_nk = images.get(image)
            if image_nk is None:
                image_nk = images[image] = natural_key(*image)
                batch.images[image_nk] = ImageRow(image_nk, *image)

        model_name = _text("model", ev.model)
        class_id = _int("class_id", ev.class_id)
        class_nk = None
        if class_id is not None:
            class_nat = (model_name or "", class_id, _text("class_label", ev.class_label))
            class_nk = classes.get(class_nat)
            if class_nk is None:
                class_nk = classes[class_nat] = natural_key(*class_nat)
                batch.classes[class_nk] = ClassRow(class_nk, *class_nat)

        status = _int("status", ev.status, _INT16)
        batch.facts.append(
            FactRow(
                event_id=event_id,
                request_id=_text("request_id", ev.request_id) or "",
                event_ts=ts,
                time_nk=time_row.minute_ts,
                user_nk=user_nk,
                image_nk=image_nk,
                class_nk=class_nk,
                route=_text("route", ev.route) or "",
                model_name=model_name,
                model_version=_int("model_version", ev.model_version),
                score=_float("score", ev.score),
                status=0 if status is None else status,
                error_code=_text("error_code", ev.error_code),
                latency_ms=_float("latency_ms", ev.latency_ms),
                queue_ms=_float("queue_ms", ev.queue_ms),
                inference_ms=_float("inference_ms", ev.inference_ms),
                batch_size=_int("batch_size", ev.batch_size),
                cache_hit=ev.cache_hit is True,
                fallback_for=_text("fallback_for", ev.fallback_for),
            )
        )
    return batch


_NO_IMAGE = (None, None, None, None, None, None)
