"""The writer: batching triggers, PII, journal spill and replay, overflow, drops, lifecycle."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from batchserve.events.config import EventsConfig
from batchserve.events.errors import MigrationError
from batchserve.events.model import Event
from batchserve.events.store import open_store
from batchserve.events.writer import EventWriter
from tests.events.event_helpers import closed_port, count_rows, make_event, target_of, wait_until, with_port
from tests.events.tcp_proxy import TcpProxy


async def _fact_count(config: EventsConfig) -> int:
    store = open_store(config)
    await store.open()
    try:
        return await count_rows(store)
    finally:
        await store.close()


def _down(config: EventsConfig, tmp_path: Path) -> EventsConfig:
    """The same writer settings with a store that refuses connections."""
    if config.database_url:
        return dataclasses.replace(config, database_url=with_port(config.database_url, closed_port()))
    # A SQLite path under a regular file cannot be opened: the embedded store's "outage".
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    return dataclasses.replace(config, events_path=blocker / "events.sqlite3")


async def test_round_trip_through_the_writer(store_config: EventsConfig) -> None:
    config = dataclasses.replace(store_config, flush_max_events=100, flush_interval_ms=20)
    writer = EventWriter(config)
    await writer.start()
    assert writer.stats.healthy
    assert writer.stats.store_kind == ("postgres" if config.database_url else "sqlite")
    for i in range(1234):
        writer.put(make_event(i))
    await writer.close()
    stats = writer.stats
    assert (stats.written_total, stats.spilled_total, stats.dropped_total, stats.buffered) == (1234, 0, 0, 0)
    assert await _fact_count(config) == 1234


async def test_a_full_batch_flushes_before_the_interval(store_config: EventsConfig) -> None:
    config = dataclasses.replace(store_config, flush_max_events=25, flush_interval_ms=3_600_000)
    writer = EventWriter(config)
    await writer.start()
    try:
        for i in range(24):
            writer.put(make_event(i))
        writer.put(make_event(24))
        await wait_until(lambda: writer.stats.written_total == 25, what="a size-triggered flush")
    finally:
        await writer.close()


async def test_the_interval_flushes_a_partial_batch(store_config: EventsConfig) -> None:
    config = dataclasses.replace(store_config, flush_max_events=10_000, flush_interval_ms=20)
    writer = EventWriter(config)
    await writer.start()
    try:
        writer.put(make_event(1))
        await wait_until(lambda: writer.stats.written_total == 1, what="an interval flush")
    finally:
        await writer.close()


@pytest.mark.parametrize(
    ("mode", "ip", "agent"),
    [
        ("full", "2001:db8:aa:bb::7", "agent/1"),
        ("truncated", "2001:db8:aa::", "agent/1"),
        ("off", None, None),
    ],
)
async def test_pii_mode_reaches_the_store(
    store_config: EventsConfig, mode: str, ip: str | None, agent: str | None
) -> None:
    config = dataclasses.replace(store_config, pii=mode)
    writer = EventWriter(config)
    await writer.start()
    writer.put(make_event(1, client_ip="2001:db8:aa:bb::7", user_agent="agent/1"))
    writer.put(make_event(2, client_ip="192.0.2.99", user_agent="agent/1"))
    await writer.close()
    store = open_store(config)
    await store.open()
    rows = sorted((await store.fetch("SELECT client_ip, user_agent FROM user_dim")), key=str)
    await store.close()
    v4 = {"full": "192.0.2.99", "truncated": "192.0.2.0", "off": None}[mode]
    assert sorted(rows, key=str) == sorted([(ip, agent), (v4, agent)], key=str)


async def test_journal_never_holds_what_the_policy_removes(store_config: EventsConfig, tmp_path: Path) -> None:
    config = dataclasses.replace(_down(store_config, tmp_path), pii="truncated", store_timeout_s=1.0)
    writer = EventWriter(config)
    await writer.start()
    writer.put(make_event(1, client_ip="203.0.113.77"))
    await writer.close()
    assert writer.stats.spilled_total == 1
    data = b"".join(p.read_bytes() for p in config.journal_dir.glob("segment-*"))
    assert b"203.0.113.0" in data and b"203.0.113.77" not in data


async def test_spilled_events_are_replayed_in_the_background_after_the_next_start(
    store_config: EventsConfig, tmp_path: Path
) -> None:
    down = dataclasses.replace(_down(store_config, tmp_path), store_timeout_s=1.0)
    first = EventWriter(down)
    await first.start()  # an unreachable store does not fail the start
    assert not first.stats.healthy
    for i in range(700):
        first.put(make_event(i))
    await first.close()
    assert first.stats.spilled_total == 700 and first.stats.dropped_total == 0
    assert first.stats.journal_segments >= 1

    second = EventWriter(store_config)
    await second.start()
    # start() returns with the journal still there: replay runs in the background.
    assert second.stats.replayed_total == 0 and second.stats.journal_segments >= 1
    await wait_until(lambda: second.stats.replayed_total == 700, what="the background replay")
    await wait_until(lambda: second.stats.journal_segments == 0, what="replayed segments deleted")
    assert not list(store_config.journal_dir.glob("segment-*"))  # replayed segments are deleted
    await second.close()
    assert await _fact_count(store_config) == 700


async def test_replaying_the_same_journal_twice_adds_no_duplicates(store_config: EventsConfig, tmp_path: Path) -> None:
    down = dataclasses.replace(_down(store_config, tmp_path), store_timeout_s=1.0)
    first = EventWriter(down)
    await first.start()
    for i in range(300):
        first.put(make_event(i))
    await first.close()
    backup = tmp_path / "journal-copy"
    shutil.copytree(store_config.journal_dir, backup)

    for _ in range(2):
        writer = EventWriter(store_config)
        await writer.start()
        await wait_until(lambda w=writer: w.stats.journal_segments == 0, what="the journal replayed")
        assert writer.stats.replayed_total == 300
        await writer.close()
        shutil.rmtree(store_config.journal_dir)
        shutil.copytree(backup, store_config.journal_dir)  # the same segments once more

    store = open_store(store_config)
    await store.open()
    rows = await store.fetch("SELECT count(*), count(DISTINCT event_id) FROM api_event_fact")
    await store.close()
    assert tuple(rows[0]) == (300, 300)


async def test_full_journal_drops_loudly_and_counts(
    store_config: EventsConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = dataclasses.replace(_down(store_config, tmp_path), journal_max_bytes=4096, store_timeout_s=1.0)
    writer = EventWriter(config)
    await writer.start()
    with caplog.at_level(logging.ERROR, logger="batchserve.events.writer"):
        for i in range(100):
            writer.put(make_event(i))
        await writer.close()
    stats = writer.stats
    assert stats.dropped_total > 0
    assert stats.spilled_total + stats.dropped_total == 100
    assert stats.journal_bytes <= 4096
    assert stats.lost["journal_full"] == stats.dropped_total == stats.lost_total
    assert any("not stored (journal_full)" in r.getMessage() for r in caplog.records)


async def test_buffer_full_spills_to_the_journal_while_the_store_hangs(pg_url: str, tmp_path: Path) -> None:
    proxy = TcpProxy(*target_of(pg_url))
    port = await proxy.start()
    config = EventsConfig(
        database_url=with_port(pg_url, port),
        journal_dir=tmp_path / "journal",
        flush_max_events=5,
        buffer_size=10,
        flush_interval_ms=10,
        store_timeout_s=30.0,  # the write hangs for the whole test, not until a timeout
    )
    writer = EventWriter(config)
    await writer.start()
    try:
        await proxy.stall()
        writer.put(make_event(0))
        await wait_until(lambda: writer.stats.buffered == 1 and len(writer._inflight) == 1, what="a hung write")
        for i in range(1, 11):
            writer.put(make_event(i))  # fills the buffer
        for i in range(11, 41):
            writer.put(make_event(i))  # the buffer is full: each one goes to the journal
            await wait_until(lambda i=i: writer.stats.spilled_total == i - 10, what="overflow journaled")
        assert writer.stats.dropped_total == 0
        # A burst within one loop iteration fills the spill queue (bounded like the buffer) too.
        for i in range(41, 71):
            writer.put(make_event(i))
        assert writer.stats.dropped_total == 20
        await wait_until(lambda: writer.stats.spilled_total == 40, what="the spill queue journaled")
        await proxy.restore()
        await wait_until(lambda: writer.stats.replayed_total == 40, what="the journal replayed")
    finally:
        await writer.close()
        await proxy.close()
    assert writer.stats.dropped_total == 20
    assert await _fact_count(dataclasses.replace(config, database_url=pg_url)) == 51


async def test_put_never_raises(store_config: EventsConfig, caplog: pytest.LogCaptureFixture) -> None:
    writer = EventWriter(store_config)
    await writer.start()
    weird: Any = object()
    with caplog.at_level(logging.ERROR, logger="batchserve.events.writer"):
        writer.put(weird)  # a caller's bug must not fail the request
    assert writer.stats.dropped_total == 1 and "takes an Event" in caplog.text
    writer.put(make_event(1, width="wide", ts="yesterday"))  # wrong field types: sanitised, kept
    writer.put(make_event(2))
    await writer.close()
    assert writer.stats.written_total == 2
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="batchserve.events.writer"):
        writer.put(make_event(3))  # after close: counted and logged, not silent
    assert writer.stats.dropped_total == 2
    assert "closed" in caplog.text


async def test_disabled_writer_is_a_no_op(tmp_path: Path) -> None:
    config = EventsConfig(enabled=False, events_path=tmp_path / "e.sqlite3", journal_dir=tmp_path / "j")
    writer = EventWriter(config)
    await writer.start()
    writer.put(make_event(1))
    await writer.close()
    assert writer.stats.buffered == 0 and writer.stats.healthy
    assert not (tmp_path / "e.sqlite3").exists() and not (tmp_path / "j").exists()


async def test_start_twice_is_an_error(store_config: EventsConfig) -> None:
    writer = EventWriter(store_config)
    await writer.start()
    try:
        with pytest.raises(RuntimeError, match="start"):
            await writer.start()
    finally:
        await writer.close()
        await writer.close()  # closing twice is harmless


async def test_close_with_the_store_hung_journals_within_its_timeout(pg_url: str, tmp_path: Path) -> None:
    proxy = TcpProxy(*target_of(pg_url))
    port = await proxy.start()
    config = EventsConfig(
        database_url=with_port(pg_url, port),
        journal_dir=tmp_path / "journal",
        flush_interval_ms=10,
        store_timeout_s=60.0,
    )
    writer = EventWriter(config)
    await writer.start()
    await proxy.stall()
    events: list[Event] = [make_event(i) for i in range(50)]
    for e in events:
        writer.put(e)
    await wait_until(lambda: len(writer._inflight) > 0, what="a hung write")
    await writer.close(timeout=1.0)  # the hung write is cancelled and journaled
    await proxy.close()
    assert writer.stats.spilled_total == 50 and writer.stats.dropped_total == 0
    replay = EventWriter(dataclasses.replace(config, database_url=pg_url))
    await replay.start()
    await wait_until(lambda: replay.stats.replayed_total == 50, what="the journal replayed")
    await replay.close()
    assert await _fact_count(dataclasses.replace(config, database_url=pg_url)) == 50


async def test_a_store_that_refuses_fails_the_start_and_frees_the_journal(pg_url: str, tmp_path: Path) -> None:
    import asyncpg

    con = await asyncpg.connect(pg_url)
    try:
        # An object squatting on a table name makes the migration fail: a misconfiguration,
        # not an outage, so start() must say so instead of journaling forever.
        await con.execute("CREATE VIEW time_dim AS SELECT 1 AS x")
    finally:
        await con.close()
    config = EventsConfig(database_url=pg_url, journal_dir=tmp_path / "journal")
    writer = EventWriter(config)
    with pytest.raises(MigrationError, match="0001_star_schema"):
        await writer.start()
    EventWriter(config).journal.close()  # the directory is free for the next attempt
