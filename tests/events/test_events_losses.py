"""No silent loss: every event is stored, journaled, set aside in the dead-letter directory, or
counted as lost with a reason.  Against the real stores: a CHECK constraint (Postgres) or a
trigger (SQLite) an operator added refuses some events; a journal holds garbage; a backend is
killed in the middle of a flush; the writer is closed in the middle of a replay.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import msgspec
import pytest

from batchserve.events.config import EventsConfig
from batchserve.events.dead_letter import DeadRecord
from batchserve.events.losses import LOSS_REASONS
from batchserve.events.model import Event
from batchserve.events.store import open_store
from batchserve.events.writer import EventWriter, WriterStats
from tests.events.event_helpers import closed_port, make_event, wait_until, wait_until_async, with_port

BAD_LATENCY = -1.0


async def _refuse_negative_latency(config: EventsConfig) -> None:
    """What an operator might add: the store now refuses events with a negative latency."""
    store = open_store(config)
    await store.open()  # creates the schema
    await store.close()
    if config.database_url:
        con = await asyncpg.connect(config.database_url)
        try:
            await con.execute("ALTER TABLE api_event_fact ADD CONSTRAINT latency_not_negative CHECK (latency_ms >= 0)")
        finally:
            await con.close()
    else:
        con_sqlite = sqlite3.connect(config.events_path)
        try:
            con_sqlite.execute(
                "CREATE TRIGGER latency_not_negative BEFORE INSERT ON api_event_fact WHEN NEW.latency_ms < 0 "
                "BEGIN SELECT RAISE(ABORT, 'latency_not_negative'); END"
            )
        finally:
            con_sqlite.close()


async def _facts(config: EventsConfig) -> tuple[int, int]:
    """(rows, distinct event ids) in the fact table."""
    store = open_store(config)
    await store.open()
    try:
        rows = await store.fetch("SELECT count(*), count(DISTINCT event_id) FROM api_event_fact")
        return int(rows[0][0]), int(rows[0][1])
    finally:
        await store.close()


def _dead_records(journal_dir: Path) -> list[DeadRecord]:
    decoder = msgspec.json.Decoder(DeadRecord)
    return [
        decoder.decode(line)
        for path in sorted((journal_dir / "dead-letter").glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


def _settled(stats: WriterStats) -> int:
    """Events stored (from memory or from the journal) or lost with a reason: each event counts once."""
    return stats.written_total + stats.replayed_total + stats.lost_total


def _down(config: EventsConfig, tmp_path: Path) -> EventsConfig:
    if config.database_url:
        return dataclasses.replace(config, database_url=with_port(config.database_url, closed_port()))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    return dataclasses.replace(config, events_path=blocker / "events.sqlite3")


async def _journal_while_down(config: EventsConfig, tmp_path: Path, events: list[Event]) -> None:
    writer = EventWriter(dataclasses.replace(_down(config, tmp_path), store_timeout_s=1.0))
    await writer.start()
    for e in events:
        writer.put(e)
    await writer.close()
    assert writer.stats.spilled_total == len(events)


async def test_events_the_store_refuses_are_set_aside_and_the_rest_stored(store_config: EventsConfig) -> None:
    config = dataclasses.replace(store_config, flush_max_events=50, flush_interval_ms=10)
    await _refuse_negative_latency(config)
    bad = {7, 23, 24}
    events = [make_event(i, latency_ms=BAD_LATENCY if i in bad else 10.0 + i) for i in range(120)]
    writer = EventWriter(config)
    await writer.start()
    for e in events:
        writer.put(e)
    await writer.close()

    stats = writer.stats
    assert stats.written_total == 117
    assert stats.lost["rejected"] == 3 and stats.lost_total == 3
    assert stats.dead_lettered_total == 3 and stats.dropped_total == 0
    # A refusal is not an outage: nothing was journaled, the store stayed healthy.
    assert stats.spilled_total == 0 and stats.flush_errors_total == 0 and stats.healthy
    assert await _facts(config) == (117, 117)
    records = _dead_records(config.journal_dir)
    assert sorted(r.event.request_id for r in records if r.event) == sorted(f"req-{i}" for i in bad)
    assert all(r.reason == "rejected" and "latency_not_negative" in r.detail for r in records)


async def test_a_journaled_batch_the_store_refuses_does_not_block_the_journal(
    store_config: EventsConfig, tmp_path: Path
) -> None:
    config = dataclasses.replace(store_config, flush_max_events=100, flush_interval_ms=10)
    events = [make_event(i, latency_ms=BAD_LATENCY if i % 100 == 5 else 1.0) for i in range(300)]
    await _journal_while_down(config, tmp_path, events)
    await _refuse_negative_latency(config)

    writer = EventWriter(config)
    await writer.start()
    try:
        await wait_until(lambda: writer.stats.journal_segments == 0, what="the journal replayed past the refusals")
        writer.put(make_event(1000))  # and fresh events still flow
        await wait_until(lambda: writer.stats.written_total == 1, what="a fresh event written")
    finally:
        await writer.close()
    stats = writer.stats
    assert stats.replayed_total == 297 and stats.lost["rejected"] == 3
    assert stats.lost_total == 3 and stats.dead_lettered_total == 3
    assert await _facts(config) == (298, 298)
    assert len(_dead_records(config.journal_dir)) == 3


async def test_an_event_that_breaks_preparation_costs_only_itself(store_config: EventsConfig) -> None:
    config = dataclasses.replace(store_config, flush_max_events=20, flush_interval_ms=10)
    # Year 1 at +05:00 has no UTC equivalent: converting it raises OverflowError, no StoreError.
    unconvertible = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    writer = EventWriter(config)
    await writer.start()
    for i in range(20):
        writer.put(make_event(i, ts=unconvertible) if i == 11 else make_event(i))
    await writer.close()

    stats = writer.stats
    assert stats.written_total == 19
    assert stats.lost["unprocessable"] == 1 and stats.dead_lettered_total == 1
    assert await _facts(config) == (19, 19)
    [record] = _dead_records(config.journal_dir)
    assert record.reason == "unprocessable" and "OverflowError" in record.detail
    assert record.event is not None and record.event.request_id == "req-11"


def _segment(journal_dir: Path, lines: list[bytes], *, torn_tail: bytes | None = None) -> None:
    journal_dir.mkdir(parents=True, exist_ok=True)
    data = b"".join(line + b"\n" for line in lines) + (torn_tail or b"")
    (journal_dir / "segment-000000000001.jsonl").write_bytes(data)


async def test_unreadable_journal_lines_are_counted_and_kept_without_personal_data(
    store_config: EventsConfig,
) -> None:
    config = dataclasses.replace(store_config, pii="truncated", flush_interval_ms=10)
    encode = msgspec.json.encode
    good = [make_event(i, client_ip=None) for i in range(10)]
    _segment(
        config.journal_dir,
        [
            *map(encode, good[:5]),
            b"\x00\xffnot json at all",
            b'{"event_id": "e1", "client_ip": "198.51.100.77", "user_agent": "curl/8", "request_id": ',
            *map(encode, good[5:]),
        ],
        torn_tail=b'{"event_id": "e2", "client_ip": "198.51.100.99',
    )

    writer = EventWriter(config)
    await writer.start()
    try:
        await wait_until(lambda: writer.stats.journal_segments == 0, what="the journal replayed")
    finally:
        await writer.close()
    stats = writer.stats
    assert stats.replayed_total == 10
    assert stats.lost["corrupt_line"] == 2 and stats.lost["torn_line"] == 1
    assert stats.lost_total == 3 and stats.dead_lettered_total == 3 and stats.dropped_total == 0
    assert await _facts(config) == (10, 10)

    records = _dead_records(config.journal_dir)
    assert sorted(r.reason for r in records) == ["corrupt_line", "corrupt_line", "torn_line"]
    assert all(r.detail.startswith("segment-000000000001.jsonl line ") for r in records)
    kept = "\n".join(r.line or "" for r in records)
    # The truncation policy holds for what is kept too: the /24 network, never the address.
    assert "198.51.100.0" in kept and "198.51.100.77" not in kept and "198.51.100.99" not in kept
    assert "not json at all" in kept


async def test_a_full_dead_letter_directory_still_counts_every_event(tmp_path: Path) -> None:
    config = EventsConfig(
        events_path=tmp_path / "events.sqlite3",
        journal_dir=tmp_path / "journal",
        flush_interval_ms=10,
        dead_letter_max_bytes=1500,  # room for about two records
    )
    await _refuse_negative_latency(config)
    writer = EventWriter(config)
    await writer.start()
    for i in range(10):
        writer.put(make_event(i, latency_ms=BAD_LATENCY))
    await writer.close()
    stats = writer.stats
    assert stats.lost["rejected"] == 10 and stats.lost_total == 10
    assert 0 < stats.dead_lettered_total < 10
    assert stats.dropped_total == 10 - stats.dead_lettered_total
    assert len(_dead_records(config.journal_dir)) == stats.dead_lettered_total


# -- attacks on the Postgres store ------------------------------------------------------------


@pytest.fixture
async def admin(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A second session on the test schema, for locks and for killing the writer's backend."""
    con = await asyncpg.connect(pg_url)
    try:
        yield con
    finally:
        await con.close()


async def _blocked_by(admin: asyncpg.Connection) -> list[int]:
    """Backends waiting on a lock ``admin`` holds."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))", admin.get_server_pid()
    )
    return [r["pid"] for r in rows]


async def _wait_blocked(admin: asyncpg.Connection, what: str) -> list[int]:
    pids: list[int] = []

    async def any_blocked() -> bool:
        pids[:] = await _blocked_by(admin)
        return bool(pids)

    await wait_until_async(any_blocked, what=what)
    return pids


async def test_a_backend_killed_in_the_middle_of_a_flush_loses_nothing(
    pg_url: str, tmp_path: Path, admin: asyncpg.Connection
) -> None:
    config = EventsConfig(
        database_url=pg_url,
        journal_dir=tmp_path / "journal",
        flush_max_events=100,
        flush_interval_ms=10,
        store_timeout_s=60.0,  # the write waits on the lock until its backend is killed
        reconnect_max_s=0.2,
    )
    writer = EventWriter(config)
    await writer.start()
    try:
        writer.put(make_event(0))
        await wait_until(lambda: writer.stats.written_total == 1, what="the first write")
        lock = admin.transaction()
        await lock.start()
        await admin.execute("LOCK TABLE api_event_fact IN SHARE MODE")  # inserts wait, reads do not
        for i in range(1, 101):
            writer.put(make_event(i))
        victims = await _wait_blocked(admin, "the writer's INSERT waiting on the lock")
        await admin.fetch("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", victims)
        await lock.rollback()
        for i in range(101, 201):
            writer.put(make_event(i))
        await wait_until(
            lambda: (
                writer.stats.written_total + writer.stats.replayed_total == 201 and writer.stats.journal_segments == 0
            ),
            what="everything stored after the kill",
        )
    finally:
        await writer.close()
    stats = writer.stats
    assert stats.flush_errors_total >= 1 and stats.spilled_total >= 100
    assert stats.lost_total == 0
    assert await _facts(config) == (201, 201)


async def test_closing_in_the_middle_of_a_replay_loses_nothing(
    pg_url: str, tmp_path: Path, admin: asyncpg.Connection
) -> None:
    config = EventsConfig(
        database_url=pg_url, journal_dir=tmp_path / "journal", flush_max_events=100, flush_interval_ms=10
    )
    await _journal_while_down(config, tmp_path, [make_event(i) for i in range(1200)])
    segments_before = sorted(p.name for p in config.journal_dir.glob("segment-*"))

    store = open_store(config)
    await store.open()  # the schema, so there is a table to lock
    await store.close()
    lock = admin.transaction()
    await lock.start()
    await admin.execute("LOCK TABLE api_event_fact IN SHARE MODE")
    writer = EventWriter(dataclasses.replace(config, store_timeout_s=60.0))
    await writer.start()
    await _wait_blocked(admin, "a replayed chunk waiting on the lock")
    assert writer.stats.replay_pending > 0
    await writer.close(timeout=0.5)  # gives up on the chunk in flight
    await lock.rollback()
    stats = writer.stats
    assert stats.lost_total == 0 and stats.replayed_total == 0
    assert sorted(p.name for p in config.journal_dir.glob("segment-*")) == segments_before

    again = EventWriter(config)
    await again.start()
    try:
        await wait_until(lambda: again.stats.journal_segments == 0, what="the replay finished by the next process")
    finally:
        await again.close()
    assert again.stats.replayed_total == 1200 and again.stats.lost_total == 0
    assert await _facts(config) == (1200, 1200)


async def test_every_event_is_accounted_for_through_refusals_and_an_outage(
    pg_url: str, tmp_path: Path, admin: asyncpg.Connection
) -> None:
    config = EventsConfig(
        database_url=pg_url,
        journal_dir=tmp_path / "journal",
        flush_max_events=50,
        flush_interval_ms=10,
        store_timeout_s=60.0,
        reconnect_max_s=0.2,
    )
    await _refuse_negative_latency(config)
    writer = EventWriter(config)
    await writer.start()
    put = 0

    def produce(n: int) -> None:
        nonlocal put
        for _ in range(n):
            writer.put(make_event(put, latency_ms=BAD_LATENCY if put % 37 == 0 else 5.0))
            put += 1

    def all_settled() -> bool:
        return _settled(writer.stats) == put and writer.stats.journal_segments == 0

    try:
        produce(200)
        await wait_until(all_settled, what="the first events settled")
        lock = admin.transaction()
        await lock.start()
        await admin.execute("LOCK TABLE api_event_fact IN SHARE MODE")
        produce(150)
        victims = await _wait_blocked(admin, "a write waiting on the lock")
        await admin.fetch("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", victims)
        await lock.rollback()
        produce(150)
        await wait_until(all_settled, what="every event settled")
    finally:
        await writer.close()
    stats = writer.stats
    refused = len(range(0, put, 37))
    assert stats.flush_errors_total >= 1
    assert stats.lost == {**dict.fromkeys(LOSS_REASONS, 0), "rejected": refused}
    assert stats.written_total + stats.replayed_total == put - refused
    assert await _facts(config) == (put - refused, put - refused)
