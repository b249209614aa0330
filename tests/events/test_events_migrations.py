"""Versioned migrations: both dialects in step, applied once, idempotent, safe to race."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from batchserve.events.config import EventsConfig
from batchserve.events.errors import SchemaMissing
from batchserve.events.migrate import latest_version, load_migrations, split_sqlite_script
from batchserve.events.store import EventStore, open_store
from tests.events.event_helpers import count_rows

TABLES = {"schema_migrations", "time_dim", "user_dim", "image_dim", "class_dim", "api_event_fact"}


def test_both_dialects_have_the_same_versions() -> None:
    pg = load_migrations("postgres")
    lite = load_migrations("sqlite")
    assert [(m.version, m.name) for m in pg] == [(m.version, m.name) for m in lite]
    assert latest_version() == len(pg) >= 1


def test_sqlite_script_splitting_keeps_statements_whole() -> None:
    statements = split_sqlite_script(load_migrations("sqlite")[0].sql)
    assert all(sqlite3.complete_statement(s) for s in statements)
    assert [s.count("CREATE TABLE") for s in statements].count(1) == 5
    assert max(s.count("CREATE ") for s in statements) == 1


async def _tables(store: EventStore) -> set[str]:
    if store.kind == "postgres":
        rows = await store.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
    else:
        rows = await store.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {r[0] for r in rows}


async def test_open_creates_the_star_and_records_the_version(store: EventStore) -> None:
    assert await _tables(store) >= TABLES
    assert store.version == latest_version()
    rows = await store.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, latest_version() + 1))


async def test_migrations_are_idempotent(store_config: EventsConfig) -> None:
    for _ in range(3):
        s = open_store(store_config)
        assert await s.open() == latest_version()
        assert await count_rows(s, "schema_migrations") == latest_version()
        await s.close()


async def test_concurrent_opens_migrate_once(pg_url: str) -> None:
    stores = [open_store(EventsConfig(database_url=pg_url)) for _ in range(4)]
    versions = await asyncio.gather(*(s.open() for s in stores))
    assert versions == [latest_version()] * 4
    assert await count_rows(stores[0], "schema_migrations") == latest_version()
    await asyncio.gather(*(s.close() for s in stores))


async def test_opening_without_migrating_reports_a_missing_schema(store_config: EventsConfig) -> None:
    s = open_store(store_config)
    with pytest.raises(SchemaMissing, match="db upgrade"):
        await s.open(migrate=False)
    await s.close()
    if store_config.database_url is None:
        assert not Path(store_config.events_path).exists()  # a read-only command creates nothing


async def test_postgres_indexes_cover_the_analytics_filters(pg_url: str) -> None:
    con = await asyncpg.connect(pg_url)
    try:
        s = open_store(EventsConfig(database_url=pg_url))
        await s.open()
        await s.close()
        indexes = {
            r["indexdef"].split(" USING btree ")[1]
            for r in await con.fetch(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'api_event_fact'"
            )
        }
    finally:
        await con.close()
    assert {"(event_ts)", "(model_name, event_ts)", "(user_key, event_ts)", "(event_id)"} <= indexes


async def test_sqlite_uses_wal(tmp_path: Path) -> None:
    s = open_store(EventsConfig(events_path=tmp_path / "e.sqlite3"))
    await s.open()
    assert (await s.fetch("PRAGMA journal_mode"))[0][0] == "wal"
    await s.close()
