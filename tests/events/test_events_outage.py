"""Database outages at the writer level, through a TCP proxy between the writer and Postgres.

Each test ends with the only numbers that matter: exactly N fact rows for N events put, and N
distinct event ids.  Cut and restore follow the writer's observable state (events spilled,
journal replayed), not the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from batchserve.events.config import EventsConfig
from batchserve.events.store import open_store
from batchserve.events.writer import EventWriter
from tests.events.event_helpers import make_event, target_of, wait_until, with_port
from tests.events.tcp_proxy import TcpProxy


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[TcpProxy]:
    p = TcpProxy(*target_of(pg_url))
    await p.start()
    try:
        yield p
    finally:
        await p.close()


def _config(pg_url: str, proxy: TcpProxy, tmp_path: Path, **overrides: object) -> EventsConfig:
    settings: dict[str, object] = {
        "database_url": with_port(pg_url, proxy.port or 0),
        "journal_dir": tmp_path / "journal",
        "flush_interval_ms": 20,
        "flush_max_events": 40,
        "store_timeout_s": 1.0,
        "reconnect_max_s": 0.3,
    }
    settings.update(overrides)
    return EventsConfig(**settings)  # type: ignore[arg-type]


async def _produce(writer: EventWriter, ids: range, tasks: int = 4) -> None:
    """Put events from several tasks at once, yielding between puts like request handlers do."""

    async def worker(part: range) -> None:
        for i in part:
            writer.put(make_event(i))
            await asyncio.sleep(0)

    await asyncio.gather(*(worker(ids[k::tasks]) for k in range(tasks)))


async def _assert_exactly(pg_url: str, n: int) -> None:
    store = open_store(EventsConfig(database_url=pg_url))
    await store.open()
    try:
        rows = await store.fetch("SELECT count(*), count(DISTINCT event_id) FROM api_event_fact")
    finally:
        await store.close()
    assert tuple(rows[0]) == (n, n)


async def test_refused_connections_lose_nothing(pg_url: str, proxy: TcpProxy, tmp_path: Path) -> None:
    writer = EventWriter(_config(pg_url, proxy, tmp_path))
    await writer.start()
    try:
        await _produce(writer, range(0, 300))
        await wait_until(lambda: writer.stats.written_total == 300, what="healthy traffic stored")

        await proxy.cut()
        await _produce(writer, range(300, 600))
        await wait_until(lambda: writer.stats.spilled_total > 0, what="the first spill")
        assert writer.stats.dropped_total == 0
        # The outage outlasts several reconnection attempts: more traffic, all of it journaled.
        await _produce(writer, range(600, 800))
        await wait_until(
            lambda: writer.stats.spilled_total >= 800 - writer.stats.written_total and writer.stats.buffered == 0,
            what="every outage event journaled",
        )
        assert not writer.stats.healthy and writer.stats.last_error

        await proxy.restore()
        await _produce(writer, range(800, 1000))
        await wait_until(
            lambda: writer.stats.healthy and writer.stats.journal_segments == 0 and writer.stats.buffered == 0,
            what="recovery and replay",
        )
        assert writer.stats.replayed_total == writer.stats.spilled_total
    finally:
        await writer.close()
    assert writer.stats.dropped_total == 0
    await _assert_exactly(pg_url, 1000)


async def test_hung_database_times_out_and_recovers(pg_url: str, proxy: TcpProxy, tmp_path: Path) -> None:
    writer = EventWriter(_config(pg_url, proxy, tmp_path, store_timeout_s=0.5))
    await writer.start()
    try:
        await proxy.stall()  # connections stay open, nothing comes back: only timeouts notice
        await _produce(writer, range(0, 400))
        await wait_until(lambda: writer.stats.spilled_total == 400, timeout=60, what="timed-out batches journaled")
        assert writer.stats.flush_errors_total >= 1
        await proxy.restore()
        await wait_until(lambda: writer.stats.replayed_total == 400, timeout=60, what="replay after the hang")
    finally:
        await writer.close()
    await _assert_exactly(pg_url, 400)


async def test_repeated_cuts_during_writes_never_duplicate(pg_url: str, proxy: TcpProxy, tmp_path: Path) -> None:
    """Cuts land while batches are in flight: a batch whose COMMIT outcome is unknown is journaled
    and replayed, and the unique event_id absorbs the ones that had committed after all."""
    writer = EventWriter(_config(pg_url, proxy, tmp_path, flush_max_events=25))
    await writer.start()
    total = 0
    try:
        for round_ in range(4):
            await _produce(writer, range(total, total + 250))
            total += 250
            await wait_until(lambda: writer.stats.buffered < 250, what="a write in flight")
            await proxy.cut()
            await wait_until(lambda: not writer.stats.healthy, what="the writer noticing the cut")
            await proxy.restore()
            await wait_until(
                lambda: writer.stats.healthy and writer.stats.journal_segments == 0 and writer.stats.buffered == 0,
                what=f"recovery {round_}",
            )
    finally:
        await writer.close()
    assert writer.stats.dropped_total == 0
    await _assert_exactly(pg_url, total)


async def test_database_down_at_start_then_back(pg_url: str, proxy: TcpProxy, tmp_path: Path) -> None:
    await proxy.cut()
    writer = EventWriter(_config(pg_url, proxy, tmp_path))
    await writer.start()  # serves (journals) without a database
    try:
        assert not writer.stats.healthy
        await _produce(writer, range(200))
        await wait_until(lambda: writer.stats.spilled_total == 200, what="journaled while down")
        await proxy.restore()
        await wait_until(lambda: writer.stats.replayed_total == 200, what="migrated, then replayed")
    finally:
        await writer.close()
    await _assert_exactly(pg_url, 200)
