"""Analytics: every grouping, nearest-rank percentiles, filters, and the same answer from both stores.

Expected values come from a plain-Python reference written from the definitions (and a few
hand-computed numbers), not from the SQL under test.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from batchserve.events.analytics import GROUP_BYS, StatsQuery, query_stats
from batchserve.events.config import EventsConfig
from batchserve.events.errors import InvalidStatsQuery
from batchserve.events.model import Event
from batchserve.events.store import EventStore, open_store
from tests.events.event_helpers import make_event

T0 = datetime(2024, 3, 9, 23, 58, 0, tzinfo=UTC)  # spans minutes, hours and a day boundary


def dataset(seed: int = 7, n: int = 400) -> list[Event]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        ts = T0 + timedelta(seconds=rng.randrange(0, 3 * 3600), microseconds=rng.randrange(1_000_000))
        failed_early = rng.random() < 0.08  # 415/413/404: no image, no class, no batch
        status = rng.choice([415, 413, 404]) if failed_early else rng.choice([200] * 12 + [500, 504])
        model = rng.choice(["alpha", "beta", "gamma"]) if status != 404 else "missing"
        class_id = None if failed_early or status >= 500 else rng.randrange(6)
        events.append(
            make_event(
                i,
                ts=ts,
                model=model,
                user=rng.choice(["alice", "bob", "carol", "anonymous"]),
                status=status,
                error_code=None if status == 200 else "some_error",
                class_id=class_id,
                class_label=None if class_id is None else ("cat", "dog", "fox", "owl", "eel", None)[class_id],
                # coarse values: plenty of ties, which is where rank definitions differ
                latency_ms=None if failed_early and rng.random() < 0.5 else float(rng.randrange(1, 60)) / 4,
                batch_size=None if failed_early or status == 504 else rng.choice([1, 2, 2, 4, 8, 8, 16]),
            )
        )
    return events


PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def _nearest_rank(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


def _key(e: Event, group_by: str) -> Any:
    ts = e.ts.astimezone(UTC)
    if group_by == "minute":
        return ts.replace(second=0, microsecond=0).isoformat()
    if group_by == "hour":
        return ts.replace(minute=0, second=0, microsecond=0).isoformat()
    if group_by == "day":
        return ts.replace(hour=0, minute=0, second=0, microsecond=0).isoformat()
    if group_by == "class":
        return None if e.class_id is None else (e.class_label if e.class_label is not None else str(e.class_id))
    if group_by == "user":
        return e.user
    return e.model


def reference(events: list[Event], q: StatsQuery) -> dict[str, Any]:
    selected = [
        e
        for e in events
        if (q.start is None or e.ts >= q.start)
        and (q.end is None or e.ts < q.end)
        and (q.model is None or e.model == q.model)
        and (q.user is None or e.user == q.user)
    ]
    by_key: dict[Any, list[Event]] = defaultdict(list)
    for e in selected:
        by_key[_key(e, q.group_by)].append(e)
    groups = []
    for key, members in by_key.items():
        latencies = [e.latency_ms for e in members if e.latency_ms is not None]
        sizes = [e.batch_size for e in members if e.batch_size is not None]
        groups.append(
            {
                "key": key,
                "requests": len(members),
                "errors": sum(e.status >= 400 for e in members),
                "latency_ms": {name: _nearest_rank(latencies, p) for name, p in PERCENTILES},
                "mean_batch_size": (sum(sizes) / len(sizes)) if sizes else None,
            }
        )
    if q.group_by in ("minute", "hour", "day"):
        groups.sort(key=lambda g: g["key"])
    else:
        groups.sort(key=lambda g: (-g["requests"], g["key"] is None, str(g["key"] or "")))
    histogram = Counter(e.batch_size for e in selected if e.batch_size is not None)
    classes = Counter((e.class_id, e.class_label) for e in selected if e.class_id is not None)
    top = sorted(classes.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1] is None, kv[0][1] or ""))
    return {
        "groups": groups,
        "batch_size_histogram": {str(size): histogram[size] for size in sorted(histogram)},
        "top_classes": [{"class_id": c, "label": label, "count": n} for (c, label), n in top[: q.top_classes]],
    }


QUERIES = [
    *(StatsQuery(group_by=g) for g in GROUP_BYS),
    StatsQuery(group_by="minute", model="beta"),
    StatsQuery(group_by="class", user="alice"),
    StatsQuery(group_by="user", start=T0 + timedelta(minutes=30), end=T0 + timedelta(minutes=95)),
    StatsQuery(group_by="model", start=T0 + timedelta(hours=1)),
    StatsQuery(group_by="day", end=T0 + timedelta(minutes=2)),
    StatsQuery(group_by="hour", model="alpha", user="bob", top_classes=2),
    StatsQuery(group_by="model", model="no-such-model"),
]


@pytest.fixture
async def loaded(store: EventStore) -> tuple[EventStore, list[Event]]:
    events = dataset()
    for i in range(0, len(events), 150):
        await store.write(events[i : i + 150])
    return store, events


async def test_matches_the_reference(loaded: tuple[EventStore, list[Event]]) -> None:
    store, events = loaded
    for q in QUERIES:  # one load, many queries: loading dominates the cost
        assert await query_stats(store, q) == reference(events, q), q


async def test_hand_computed_percentiles(store: EventStore) -> None:
    # 1..20 ms in one minute: nearest rank p50 = 10th = 10, p95 = 19th = 19, p99 = 20th = 20.
    events = [make_event(i, ts=T0 + timedelta(seconds=i), latency_ms=float(i + 1), batch_size=2) for i in range(20)]
    events.append(make_event(99, ts=T0 + timedelta(seconds=30), latency_ms=None, batch_size=None, status=415))
    await store.write(events)
    (group,) = (await query_stats(store, StatsQuery(group_by="minute")))["groups"]
    assert group == {
        "key": "2024-03-09T23:58:00+00:00",
        "requests": 21,
        "errors": 1,
        "latency_ms": {"p50": 10.0, "p95": 19.0, "p99": 20.0},
        "mean_batch_size": 2.0,
    }


async def test_single_value_and_no_value_groups(store: EventStore) -> None:
    await store.write(
        [
            make_event(1, model="one", latency_ms=7.5),
            make_event(2, model="none", latency_ms=None, batch_size=None),
        ]
    )
    groups = {g["key"]: g for g in (await query_stats(store, StatsQuery(group_by="model")))["groups"]}
    assert groups["one"]["latency_ms"] == {"p50": 7.5, "p95": 7.5, "p99": 7.5}
    assert groups["none"]["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert groups["none"]["mean_batch_size"] is None


async def test_time_range_is_start_inclusive_end_exclusive(store: EventStore) -> None:
    edge = datetime(2024, 3, 10, 0, 0, 0, 500, tzinfo=UTC)
    await store.write([make_event(1, ts=edge - timedelta(microseconds=1)), make_event(2, ts=edge)])

    async def requests(**kw: Any) -> int:
        result = await query_stats(store, StatsQuery(group_by="day", **kw))
        return sum(g["requests"] for g in result["groups"])

    assert await requests(start=edge) == 1
    assert await requests(end=edge) == 1
    assert await requests(start=edge, end=edge) == 0
    assert await requests(start=edge.replace(tzinfo=None)) == 1  # naive means UTC
    other_zone = edge.astimezone(timezone(timedelta(hours=-5)))
    assert await requests(start=other_zone) == 1


async def test_empty_store(store: EventStore) -> None:
    assert await query_stats(store, StatsQuery()) == {"groups": [], "batch_size_histogram": {}, "top_classes": []}


async def test_postgres_and_sqlite_give_identical_answers(pg_url: str, tmp_path: Any) -> None:
    events = dataset(seed=11, n=600)
    stores = [
        open_store(EventsConfig(database_url=pg_url)),
        open_store(EventsConfig(events_path=tmp_path / "e.sqlite3")),
    ]
    try:
        for s in stores:
            await s.open()
            await s.write(events)
        for q in QUERIES:
            pg_answer, lite_answer = [await query_stats(s, q) for s in stores]
            assert pg_answer == lite_answer, q
            if q.model != "no-such-model":
                assert pg_answer["groups"], q
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"group_by": "week"}, "group_by must be one of"),
        ({"start": datetime(2024, 2, 1), "end": datetime(2024, 1, 1)}, "is after end"),
        ({"start": "2024-01-01"}, "must be a datetime"),
        ({"top_classes": -1}, "top_classes"),
    ],
)
def test_invalid_queries_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidStatsQuery, match=message):
        StatsQuery(**kwargs)


def test_invalid_query_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        StatsQuery(group_by="")


def test_reference_sanity() -> None:
    assert _nearest_rank([5.0, 1.0, 3.0], 0.5) == 3.0
    assert _nearest_rank([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0  # rank ceil(2.0) = 2
    assert _nearest_rank([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert uuid.UUID(dataset(n=1)[0].event_id)
