"""The key table in both databases: add, list, revoke, names taken, and reading a database that
has no key table yet (which must create nothing)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from batchserve.events.config import EventsConfig
from batchserve.events.errors import SchemaMissing, StoreError
from batchserve.events.keys import KeyNameTaken, StoredKey, open_key_store
from batchserve.events.migrate import latest_version
from batchserve.events.store import open_store

NOW = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def key(name: str, **changes: object) -> StoredKey:
    base = StoredKey(name, f"{hash(name) & 0xFFFFFFFF:064x}", ("classify", "stats"), 20.0, 40, NOW)
    return replace(base, **changes)  # type: ignore[arg-type]  # test data: the fields are known


async def test_keys_round_trip(store_config: EventsConfig) -> None:
    store = open_key_store(store_config)
    await store.open(migrate=True)
    try:
        alice = key("alice", expires_at=NOW + timedelta(days=30))
        bob = key("bob", scopes=("admin",), rate_per_s=None, burst=None)
        await store.add(bob)
        await store.add(alice)
        assert await store.list_keys() == [alice, bob]
        with pytest.raises(KeyNameTaken):
            await store.add(key("alice", key_sha256="0" * 64))
        assert await store.revoke("alice", NOW + timedelta(hours=1))
        assert not await store.revoke("alice", NOW + timedelta(hours=2))  # already revoked
        assert not await store.revoke("nobody", NOW)
        everything = await store.list_keys()
        assert everything[0].revoked_at == NOW + timedelta(hours=1)
        assert not everything[0].is_active(NOW + timedelta(hours=2))
        assert everything[1].is_active(NOW)
        assert await store.list_keys(include_revoked=False) == [bob]
        assert not alice.is_active(NOW + timedelta(days=31))  # expired
    finally:
        await store.close()


async def test_a_rate_without_a_burst_is_refused_by_the_table(store_config: EventsConfig) -> None:
    store = open_key_store(store_config)
    await store.open(migrate=True)
    try:
        with pytest.raises(StoreError):
            await store.add(key("half", burst=None))
        with pytest.raises(StoreError):
            await store.add(key("zero", rate_per_s=0.0))
    finally:
        await store.close()


async def test_reading_without_a_key_table_says_so(store_config: EventsConfig) -> None:
    store = open_key_store(store_config)
    with pytest.raises(SchemaMissing):
        await store.open(migrate=False)
    await store.close()
    if store_config.database_url is None:
        assert not Path(store_config.events_path).exists()


async def test_the_event_store_and_the_key_store_share_one_schema(store_config: EventsConfig) -> None:
    events = open_store(store_config)
    assert await events.open() == latest_version() >= 2  # the event writer's start creates the key table too
    keys = open_key_store(store_config)
    try:
        await keys.open(migrate=False)
        await keys.add(key("carol"))
        assert [k.name for k in await keys.list_keys()] == ["carol"]
    finally:
        await keys.close()
        await events.close()
