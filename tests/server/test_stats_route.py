"""`GET /v1/stats` against the real app and the real stores: a bounded window, a bounded time,
connections of its own — analytics never slows, blocks or breaks event ingestion."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from batchserve.events.config import EventsConfig
from batchserve.events.stats_reader import APPLICATION_NAME
from batchserve.events.writer import EventWriter
from tests.events.conftest import pg_url  # noqa: F401 - a fixture: a Postgres schema of this test's own
from tests.events.event_helpers import (
    closed_port,
    make_event,
    wait_until,
    wait_until_async,
    with_port,
    with_search_path,
)
from tests.server.conftest import AppFactory, jpeg_bytes


@pytest.fixture(params=["sqlite", "postgres"])
def events_settings(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    settings: dict[str, Any] = {"events": True, "events_flush_interval_ms": 10, "journal_dir": tmp_path / "journal"}
    if request.param == "postgres":
        settings["database_url"] = request.getfixturevalue("pg_url")
    return settings


async def _settle(client: httpx.AsyncClient, n: int) -> None:
    writer = client.app_state.serving.writer  # type: ignore[attr-defined]
    await wait_until(lambda: writer.stats.written_total >= n, what=f"{n} events written")


async def _classify(client: httpx.AsyncClient, n: int) -> None:
    for _ in range(n):
        response = await client.post("/v1/classify", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text


async def test_without_from_only_the_last_day_is_counted(make_client: AppFactory, events_settings: dict) -> None:
    now = datetime.now(UTC)
    async with make_client(**events_settings) as client:
        writer = client.app_state.serving.writer
        for i in range(5):
            writer.put(make_event(i, ts=now - timedelta(days=2)))
        for i in range(5, 8):
            writer.put(make_event(i, ts=now - timedelta(hours=1)))
        await _settle(client, 8)
        response = await client.get("/v1/stats", params={"group_by": "model"})
        assert response.status_code == 200, response.text
        assert [g["requests"] for g in response.json()["groups"]] == [3]
        wide = await client.get(
            "/v1/stats", params={"group_by": "model", "from": (now - timedelta(days=3)).isoformat()}
        )
        assert [g["requests"] for g in wide.json()["groups"]] == [8]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"from": "2020-01-01T00:00:00Z", "to": "2020-03-01T00:00:00Z"}, "at most 31 days"),
        ({"from": "2000-01-01T00:00:00Z"}, "stats_max_window_days"),
        ({"from": "0001-01-01T00:00:00+05:00"}, "representable"),
        ({"to": "0001-01-01T00:00:00Z"}, "too early"),
    ],
)
async def test_windows_too_wide_or_impossible_answer_422(
    make_client: AppFactory, tmp_path: Path, params: dict[str, str], needle: str
) -> None:
    async with make_client(events=True) as client:
        response = await client.get("/v1/stats", params=params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and needle in error["message"]


# -- Postgres: analytics must not hurt ingestion -------------------------------------------------


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:  # noqa: F811 - the fixture imported above
    con = await asyncpg.connect(pg_url)
    try:
        yield con
    finally:
        await con.close()


async def _pids_blocked_by(admin: asyncpg.Connection) -> list[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))", admin.get_server_pid()
    )
    return [r["pid"] for r in rows]


async def test_a_statistics_timeout_answers_504_and_spares_the_writers_write(
    make_client: AppFactory,
    pg_url: str,  # noqa: F811 - the fixture imported above
    admin: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    settings = {
        "events": True,
        "database_url": pg_url,
        "journal_dir": tmp_path / "journal",
        "events_flush_interval_ms": 10,
        "events_store_timeout_s": 60.0,
        "stats_statement_timeout_ms": 300,
    }
    async with make_client(**settings) as client:
        writer = client.app_state.serving.writer
        await _classify(client, 1)
        await _settle(client, 1)
        lock = admin.transaction()
        await lock.start()
        try:
            # Blocks the writer's INSERT and the statistics' SELECT alike.
            await admin.execute("LOCK TABLE api_event_fact IN ACCESS EXCLUSIVE MODE")
            await _classify(client, 5)
            held: list[int] = []

            async def writer_waits() -> bool:
                held[:] = await _pids_blocked_by(admin)
                return bool(held)

            await wait_until_async(writer_waits, what="the writer's INSERT waiting on the lock")
            response = await client.get("/v1/stats")
            assert response.status_code == 504, response.text
            error = response.json()["error"]
            assert error["code"] == "stats_timeout" and "300 ms" in error["message"]
            # The statistics' timeout cut nothing of the writer's: its session still waits for the lock.
            alive = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", held)
            assert sorted(r["pid"] for r in alive) == sorted(held)
        finally:
            await lock.rollback()
        await _settle(client, 6)
        assert writer.stats.flush_errors_total == 0 and writer.stats.spilled_total == 0
        response = await client.get("/v1/stats", params={"group_by": "model"})
        assert response.status_code == 200 and response.json()["groups"][0]["requests"] == 6


def _with_catalog_last(url: str) -> str:
    """``url`` whose search path puts the test schema before pg_catalog, so it can shadow a function."""
    schema = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["search_path"]
    return with_search_path(url, f"{schema},pg_catalog")


# Only the statistics call avg(float8); the writer never does.  Shadowing it in the test schema
# makes every statistics query wait inside the real SQL, on the real connections, for an advisory
# lock the test holds: they hang exactly as long as the test wants, and never outlive it (the
# lock goes with the test's session).
_HOLD_KEY = 0x62617463  # any bigint; the schema is the test's own
_WAITING_AVG = f"""
CREATE FUNCTION held_avg_final(state float8[]) RETURNS float8 LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared({_HOLD_KEY});
    RETURN pg_catalog.float8_avg(state);
END $$;
CREATE AGGREGATE avg(float8) (
    SFUNC = pg_catalog.float8_accum, STYPE = float8[], FINALFUNC = held_avg_final, INITCOND = '{{0,0,0}}'
);
"""
# Client sessions only: a parallel query's worker processes wait on the same lock, under no application name.
_WAITING_STATS = (
    "SELECT pid, application_name FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid)) "
    "AND query LIKE '%percentile_disc%' AND backend_type = 'client backend'"
)


async def test_hanging_statistics_queries_do_not_starve_the_writer(
    make_client: AppFactory,
    pg_url: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    url = _with_catalog_last(pg_url)
    settings = {
        "events": True,
        "database_url": url,
        "journal_dir": tmp_path / "journal",
        "events_flush_interval_ms": 10,
        "events_store_timeout_s": 3.0,
        "stats_statement_timeout_ms": 600_000,  # the queries hang until this test lets them go
    }
    async with make_client(**settings) as client:
        writer = client.app_state.serving.writer
        await _classify(client, 1)  # something in the window, so the aggregate runs
        await _settle(client, 1)
        holder = await asyncpg.connect(url)
        try:
            await holder.execute(_WAITING_AVG)
            await holder.execute(f"SELECT pg_advisory_lock({_HOLD_KEY})")
            # More hanging queries than the writer's own pool has connections.
            queries = [asyncio.create_task(client.get("/v1/stats")) for _ in range(5)]
            waiting: list[asyncpg.Record] = []

            async def statistics_hang() -> bool:
                waiting[:] = await holder.fetch(_WAITING_STATS, holder.get_server_pid())
                return len(waiting) >= 2

            await wait_until_async(statistics_hang, what="statistics queries waiting in the database")
            assert {r["application_name"] for r in waiting} == {APPLICATION_NAME}
            await _classify(client, 20)
            await _settle(client, 21)
            assert writer.stats.flush_errors_total == 0 and writer.stats.spilled_total == 0
            assert not any(q.done() for q in queries)  # they were hanging all along
            await holder.execute(f"SELECT pg_advisory_unlock({_HOLD_KEY})")
            answers = await asyncio.gather(*queries)
        finally:
            await holder.close()
        for response in answers:
            assert response.status_code == 200, response.text
            assert sum(g["requests"] for g in response.json()["groups"]) >= 1


async def test_the_server_is_ready_while_a_journal_left_behind_replays(
    make_client: AppFactory,
    pg_url: str,  # noqa: F811 - the fixture imported above
    admin: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    config = EventsConfig(database_url=pg_url, journal_dir=journal, flush_max_events=100, store_timeout_s=1.0)
    store_down = dataclasses.replace(config, database_url=with_port(pg_url, closed_port()))
    earlier = EventWriter(store_down)
    await earlier.start()
    for i in range(1000):
        earlier.put(make_event(i))
    await earlier.close()
    assert earlier.stats.spilled_total == 1000
    schema = EventWriter(dataclasses.replace(config, journal_dir=tmp_path / "other-journal"))
    await schema.start()  # creates the tables, so there is one to lock
    await schema.close()

    lock = admin.transaction()
    await lock.start()
    released = False
    try:
        await admin.execute("LOCK TABLE api_event_fact IN SHARE MODE")  # the replay's inserts wait
        settings = {
            "events": True,
            "database_url": pg_url,
            "journal_dir": journal,
            "events_flush_interval_ms": 10,
            "events_flush_max_events": 100,
            "events_store_timeout_s": 120.0,
        }
        async with asyncio.timeout(60), make_client(**settings) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            writer = client.app_state.serving.writer
            await wait_until_async(lambda: _blocked(admin), what="the replay waiting on the lock")
            assert writer.stats.journal_segments >= 1 and writer.stats.replayed_total == 0
            await lock.rollback()
            released = True
            await wait_until(lambda: writer.stats.journal_segments == 0, what="the replay finished")
            assert writer.stats.replayed_total == 1000 and writer.stats.lost_total == 0
            metrics = (await client.get("/metrics")).text
            assert 'batchserve_events_lost_total{reason="corrupt_line"} 0.0' in metrics
    finally:
        if not released:
            await lock.rollback()


async def _blocked(admin: asyncpg.Connection) -> bool:
    return bool(await _pids_blocked_by(admin))
