"""Both stores: round trip, dimension deduplication, idempotent writes, stale key recovery."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from batchserve.events.config import EventsConfig
from batchserve.events.store import EventStore, open_store
from tests.events.event_helpers import WITHOUT_IMAGE, count_rows, make_event

DIM_TABLES = ("time_dim", "user_dim", "image_dim", "class_dim")


async def _dim_counts(store: EventStore) -> dict[str, int]:
    return {t: await count_rows(store, t) for t in DIM_TABLES}


def _as_utc(value: Any) -> datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.astimezone(UTC)


async def test_round_trip_keeps_every_field(store: EventStore) -> None:
    event = make_event(
        3,
        ts=datetime(2024, 5, 1, 23, 59, 59, 999999, tzinfo=UTC),
        user_agent="Mozilla/5.0 (X11; Linux) ünïcode ☃",
        score=0.123456789012345,
        latency_ms=12.75,
        status=207,
        error_code=None,
    )
    assert await store.write([event]) == 1
    sql = """
    SELECT f.event_id, f.request_id, f.event_ts, f.route, f.model_name, f.model_version, f.score, f.status,
           f.error_code, f.latency_ms, f.queue_ms, f.inference_ms, f.batch_size, f.request_count,
           u.user_name, u.client_ip, u.user_agent, i.sha256, i.filename, i.content_type, i.width, i.height,
           i.byte_size, c.model_name, c.class_id, c.class_name, t.minute_ts, t.hour, t.weekday
    FROM api_event_fact f
    JOIN user_dim u ON u.user_key = f.user_key
    JOIN image_dim i ON i.image_key = f.image_key
    JOIN class_dim c ON c.class_key = f.class_key
    JOIN time_dim t ON t.time_key = f.time_key
    """
    (row,) = await store.fetch(sql)
    row = list(row)
    assert uuid.UUID(str(row[0])) == uuid.UUID(event.event_id)
    assert _as_utc(row[2]) == event.ts
    assert _as_utc(row[26]) == datetime(2024, 5, 1, 23, 59, tzinfo=UTC)
    row[0], row[2], row[26] = None, None, None
    assert row == [
        None, "req-3", None, "v1", "tiny", 1, 0.123456789012345, 207,
        None, 12.75, 1.0, 5.0, 4, 1,
        "key-0", "203.0.113.3", "Mozilla/5.0 (X11; Linux) ünïcode ☃", f"{3:064x}", "img3.jpg", "image/jpeg", 640, 480,
        10_003, "tiny", 3, "class-3", None, 23, 3,
    ]  # fmt: skip


async def test_dimensions_are_deduplicated(store: EventStore) -> None:
    # 60 events: 3 users x 1 agent x 60 ips -> 60 user rows; 4 images; 5 classes; 7 minutes
    events = [make_event(i, client_ip="198.51.100.1") for i in range(60)]
    assert await store.write(events) == 60
    counts = await _dim_counts(store)
    assert counts == {"time_dim": 7, "user_dim": 3, "image_dim": 4, "class_dim": 5}
    # New facts over the same dimension values add facts only, even with a cold key cache.
    store.keys.clear()
    more = [make_event(i, client_ip="198.51.100.1") for i in range(60)]
    assert await store.write(more) == 60
    assert await _dim_counts(store) == counts
    assert await count_rows(store) == 120


async def test_writing_the_same_events_again_adds_nothing(store: EventStore) -> None:
    events = [make_event(i) for i in range(50)]
    assert await store.write(events) == 50
    assert await store.write(events) == 0
    assert await store.write([*events[:10], make_event(99)]) == 1
    assert await count_rows(store) == 51
    rows = await store.fetch("SELECT count(DISTINCT event_id) FROM api_event_fact")
    assert rows[0][0] == 51


async def test_hex_and_canonical_ids_are_the_same_event(store: EventStore) -> None:
    event = make_event(1)
    assert await store.write([event]) == 1
    again = make_event(1, event_id=str(uuid.UUID(event.event_id)).upper())
    assert await store.write([again]) == 0


async def test_failed_request_without_image_or_class(store: EventStore) -> None:
    event = make_event(
        1, status=404, error_code="model_not_found", model="nope", queue_ms=None, inference_ms=None, **WITHOUT_IMAGE
    )
    assert await store.write([event]) == 1
    (row,) = await store.fetch("SELECT image_key, class_key, status, error_code, batch_size FROM api_event_fact")
    assert tuple(row) == (None, None, 404, "model_not_found", None)


async def test_hostile_values_are_stored_not_fatal(store: EventStore) -> None:
    good = [make_event(i) for i in range(5)]
    bad = make_event(
        10,
        event_id="definitely not a uuid",
        user_agent="evil\x00agent" + "A" * 10_000,
        filename="../../etc/passwd\x00.jpg",
        width=2**62,
        score=math.nan,
        latency_ms=-math.inf,
        ts=datetime(2024, 5, 1, 12, 0),  # naive
    )
    assert await store.write([*good, bad]) == 6
    assert await store.write([bad]) == 0  # the derived id is stable


async def test_stale_cached_keys_are_reloaded(store: EventStore, store_config: EventsConfig) -> None:
    events = [make_event(i) for i in range(10)]
    await store.write(events)
    assert len(store.keys) > 0
    # Someone prunes the database behind the writer's back (retention job, manual cleanup).
    statements = ["DELETE FROM api_event_fact", *(f"DELETE FROM {t}" for t in DIM_TABLES)]
    if store_config.database_url:
        con = await asyncpg.connect(store_config.database_url)
        try:
            for sql in statements:
                await con.execute(sql)
        finally:
            await con.close()
    else:
        con_lite = sqlite3.connect(store_config.events_path)
        with con_lite:
            for sql in statements:
                con_lite.execute(sql)
        con_lite.close()
    assert await store.write([make_event(i) for i in range(10)]) == 10
    facts = await store.fetch(
        "SELECT count(*) FROM api_event_fact f JOIN user_dim u ON u.user_key = f.user_key "
        "JOIN time_dim t ON t.time_key = f.time_key"
    )
    assert facts[0][0] == 10


async def test_concurrent_writers_share_dimensions(store: EventStore, store_config: EventsConfig) -> None:
    others = [open_store(store_config) for _ in range(3)]
    for s in others:
        await s.open()
    try:
        writers = [store, *others]
        # Every writer sees the same dimension values at the same time.
        batches = [[make_event(i) for i in range(k * 100, k * 100 + 100)] for k in range(len(writers))]
        inserted = await asyncio.gather(*(w.write(b) for w, b in zip(writers, batches, strict=True)))
    finally:
        for s in others:
            await s.close()
    assert inserted == [100] * 4
    rows = await store.fetch("SELECT count(*), count(DISTINCT nk) FROM user_dim")
    assert rows[0][0] == rows[0][1]
    assert await count_rows(store, "image_dim") == 4
    assert await count_rows(store, "class_dim") == 5
