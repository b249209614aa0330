"""Analytics on connections of their own: bounded in time, read-only, and never the writer's."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from batchserve.events.analytics import StatsQuery, bounded_window, query_stats
from batchserve.events.config import EventsConfig
from batchserve.events.errors import InvalidStatsQuery, StatsTimeout, StoreError
from batchserve.events.stats_reader import APPLICATION_NAME, SqliteStatsReader, open_stats_reader
from batchserve.events.writer import EventWriter
from tests.events.event_helpers import make_event, wait_until, wait_until_async

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


# -- the window ---------------------------------------------------------------------------------


def test_without_from_the_window_is_the_default_before_to() -> None:
    assert bounded_window(None, None, now=NOW, default=DAY, maximum=7 * DAY) == (NOW - DAY, NOW)
    end = datetime(2025, 2, 1)  # naive: UTC
    assert bounded_window(None, end, now=NOW, default=DAY, maximum=7 * DAY) == (
        end.replace(tzinfo=UTC) - DAY,
        end.replace(tzinfo=UTC),
    )


def test_a_window_wider_than_the_maximum_is_refused_naming_the_limit() -> None:
    with pytest.raises(InvalidStatsQuery, match=r"spans 8\.0 days; at most 7 days .*stats_max_window_days"):
        bounded_window(NOW - 8 * DAY, None, now=NOW, default=DAY, maximum=7 * DAY)
    assert bounded_window(NOW - 7 * DAY, None, now=NOW, default=DAY, maximum=7 * DAY) == (NOW - 7 * DAY, NOW)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (None, datetime(1, 1, 1)),  # no room for the default window before it
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), None),  # no UTC equivalent
        (NOW, NOW - DAY),  # reversed
    ],
)
def test_windows_that_cannot_be_computed_are_refused(start: datetime | None, end: datetime | None) -> None:
    with pytest.raises(InvalidStatsQuery):
        bounded_window(start, end, now=NOW, default=DAY, maximum=7 * DAY)


# -- SQLite ---------------------------------------------------------------------------------------


async def _sqlite_with_events(tmp_path: Path, n: int) -> EventsConfig:
    config = EventsConfig(events_path=tmp_path / "events.sqlite3", journal_dir=tmp_path / "journal")
    writer = EventWriter(config)
    await writer.start()
    for i in range(n):
        writer.put(make_event(i))
    await writer.close()
    assert writer.stats.written_total == n
    return config


async def test_sqlite_statistics_stop_at_their_deadline(tmp_path: Path) -> None:
    config = await _sqlite_with_events(tmp_path, 300)
    query = StatsQuery(group_by="minute")
    steady = open_stats_reader(config)
    try:
        assert sum(g["requests"] for g in (await query_stats(steady, query))["groups"]) == 300
    finally:
        await steady.close()
    # A clock that moves a minute every time it is read: the statement's first progress check is
    # already past its 10 s deadline, so it is aborted however fast this machine runs it.
    ticks = itertools.count()
    hurry = True

    def clock() -> float:
        return 60.0 * next(ticks) if hurry else 0.0

    hurried = SqliteStatsReader(config.events_path, statement_timeout_ms=10_000, clock=clock)
    try:
        with pytest.raises(StatsTimeout, match="longer than 10000 ms"):
            await query_stats(hurried, query)
        hurry = False  # the connection is still usable once time behaves again
        assert sum(g["requests"] for g in (await query_stats(hurried, query))["groups"]) == 300
    finally:
        await hurried.close()


async def test_sqlite_statistics_cannot_write(tmp_path: Path) -> None:
    config = await _sqlite_with_events(tmp_path, 1)
    reader = open_stats_reader(config)
    try:
        with pytest.raises(StoreError):
            await reader.fetch("DELETE FROM api_event_fact")
        assert (await reader.fetch("SELECT count(*) FROM api_event_fact")) == [(1,)]
    finally:
        await reader.close()


# -- Postgres ---------------------------------------------------------------------------------


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    con = await asyncpg.connect(pg_url)
    try:
        yield con
    finally:
        await con.close()


async def test_postgres_statistics_sessions_are_bounded_and_read_only(pg_url: str, tmp_path: Path) -> None:
    config = EventsConfig(database_url=pg_url, journal_dir=tmp_path / "journal", stats_statement_timeout_ms=1234)
    writer = EventWriter(config)
    await writer.start()  # creates the schema
    await writer.close()
    reader = open_stats_reader(config)
    try:
        [(timeout, read_only, name)] = await reader.fetch(
            "SELECT current_setting('statement_timeout'), current_setting('default_transaction_read_only'), "
            "current_setting('application_name')"
        )
        assert (timeout, read_only, name) == ("1234ms", "on", APPLICATION_NAME)
        with pytest.raises(StoreError, match="read-only"):
            await reader.fetch("DELETE FROM api_event_fact")
    finally:
        await reader.close()


async def test_a_statistics_timeout_leaves_the_writers_write_in_flight_alone(
    pg_url: str, tmp_path: Path, admin: asyncpg.Connection
) -> None:
    config = EventsConfig(
        database_url=pg_url,
        journal_dir=tmp_path / "journal",
        flush_interval_ms=10,
        store_timeout_s=60.0,
        stats_statement_timeout_ms=300,
    )
    writer = EventWriter(config)
    reader = open_stats_reader(config)
    await writer.start()
    try:
        writer.put(make_event(0, ts=datetime.now(UTC)))
        await wait_until(lambda: writer.stats.written_total == 1, what="the first write")
        lock = admin.transaction()
        await lock.start()
        # Blocks the writer's INSERT and the statistics' SELECT alike.
        await admin.execute("LOCK TABLE api_event_fact IN ACCESS EXCLUSIVE MODE")
        for i in range(1, 11):
            writer.put(make_event(i, ts=datetime.now(UTC)))
        blocked: list[int] = []

        async def writer_blocked() -> bool:
            blocked[:] = [
                r["pid"]
                for r in await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))",
                    admin.get_server_pid(),
                )
            ]
            return bool(blocked)

        await wait_until_async(writer_blocked, what="the writer's write waiting on the lock")
        with pytest.raises(StatsTimeout):
            await query_stats(reader, StatsQuery(start=datetime.now(UTC) - DAY))
        # The writer's session survived the statistics' timeout, still waiting for its lock.
        still = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", blocked)
        assert [r["pid"] for r in still] == blocked
        await lock.rollback()
        await wait_until(lambda: writer.stats.written_total == 11, what="the held write committed")
        assert writer.stats.flush_errors_total == 0 and writer.stats.spilled_total == 0
        result = await query_stats(reader, StatsQuery(start=datetime.now(UTC) - DAY, group_by="model"))
        assert result["groups"][0]["requests"] == 11
    finally:
        await asyncio.gather(reader.close(), writer.close())
