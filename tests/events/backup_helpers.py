"""Shared pieces of the backup tests: moto's S3 server, databases to back up and restore into, and
reading every table back for comparison."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from batchserve.events.backup_format import TABLES
from batchserve.events.config import EventsConfig
from batchserve.events.keys import StoredKey, open_key_store
from batchserve.events.store import open_store
from tests.events.conftest import base_database_url
from tests.events.event_helpers import T0, WITHOUT_IMAGE, make_event, scratch_schema

# moto checks every part but the last against S3's minimum; the tests lower both to keep data small.
SMALL_PART = 64 << 10
KEY_TIME = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def sha256_hex(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


async def populate(config: EventsConfig, n: int = 120, start: int = 0) -> None:
    """``n`` events (a few without image, cached, or from a fallback) and two API keys."""
    events = [
        # Random file names keep image_dim from compressing much, so a few hundred rows span parts.
        make_event(i, image_sha256=sha256_hex(i), filename=f"{secrets.token_urlsafe(180)}.jpg", cache_hit=i % 7 == 0)
        for i in range(start, start + n)
    ]
    events += [
        make_event(start + n + i, **{**WITHOUT_IMAGE, "status": 415, "error_code": "unsupported_media_type"})
        for i in range(3)
    ]
    events.append(make_event(start + n + 3, fallback_for="primary", model="tiny"))
    store = open_store(config)
    await store.open()
    try:
        await store.write(events)
    finally:
        await store.close()
    keys = open_key_store(config)
    await keys.open(migrate=True)
    try:
        await keys.add(StoredKey(f"alice-{start}", sha256_hex(-1 - start), ("classify", "stats"), 20.0, 40, KEY_TIME))
        await keys.add(
            StoredKey(
                f"ops-{start}",
                sha256_hex(-2 - start),
                ("admin",),
                None,
                None,
                KEY_TIME,
                expires_at=KEY_TIME + timedelta(days=30),
                revoked_at=KEY_TIME + timedelta(hours=1),
            )
        )
    finally:
        await keys.close()


def late_events(n: int) -> list[Any]:
    """Events that need a new row in every dimension: later minutes, new users, images and classes."""
    return [
        make_event(
            10_000 + i,
            ts=T0 + timedelta(days=3, minutes=i),
            user=f"late-{i}",
            model="late-model",
            class_id=100 + i,
            image_sha256=sha256_hex(10_000 + i),
        )
        for i in range(n)
    ]


@contextlib.contextmanager
def sibling_schema() -> Iterator[str]:
    """A second, empty Postgres schema (the pg_url fixture provides the first)."""
    with scratch_schema(base_database_url(), "events_restore") as url:
        yield url


def read_tables(config: EventsConfig) -> dict[str, list[tuple[Any, ...]]]:
    """Every backed-up table that exists, all rows ordered by their first column."""
    if config.database_url:
        return asyncio.run(_read_postgres(config.database_url))
    if not config.events_path.exists():
        return {}
    con = sqlite3.connect(config.events_path)
    try:
        present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t: con.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES if t in present}
    finally:
        con.close()


async def _read_postgres(url: str) -> dict[str, list[tuple[Any, ...]]]:
    con = await asyncpg.connect(url, timeout=10)
    try:
        tables: dict[str, list[tuple[Any, ...]]] = {}
        for t in TABLES:
            if await con.fetchval(
                "SELECT to_regclass($1::text) IS NOT NULL", f"{await con.fetchval('SELECT current_schema()')}.{t}"
            ):
                tables[t] = [tuple(r) for r in await con.fetch(f"SELECT * FROM {t} ORDER BY 1")]
        return tables
    finally:
        await con.close()


def counts(config: EventsConfig) -> dict[str, int]:
    return {t: len(rows) for t, rows in read_tables(config).items()}
