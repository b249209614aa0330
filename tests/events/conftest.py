"""Fixtures of the event pipeline tests: an isolated Postgres schema per test, stores, events."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from batchserve.events.config import EventsConfig, redact_url
from batchserve.events.model import Event
from batchserve.events.store import EventStore, open_store
from tests.events.event_helpers import make_event, scratch_schema

T = TypeVar("T")

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
_reachability: dict[str, str | None] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that talks to Postgres, so ``-m "not postgres"`` selects the rest."""
    here = Path(__file__).parent
    for item in items:
        if here not in item.path.parents:  # conftest hooks see the whole session's items
            continue
        callspec = getattr(item, "callspec", None)
        uses_pg = "pg_url" in getattr(item, "fixturenames", ()) or (
            callspec is not None and callspec.params.get("store_config") == "postgres"
        )
        if uses_pg:
            item.add_marker(pytest.mark.postgres)


def base_database_url() -> str:
    return os.environ.get("BATCHSERVE_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a private loop in a private thread.

    Keeps the schema set-up synchronous (so parametrised fixtures can request it lazily)
    without touching the event loop that pytest-asyncio gives the test.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _unreachable_reason(url: str) -> str | None:
    try:
        con = await asyncpg.connect(url, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "no Postgres for these tests"
        return f"{type(exc).__name__}: {exc}"
    await con.close()
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A Postgres URL whose connections live in a fresh schema, dropped after the test.

    Without a reachable server the test is skipped — or fails when CI=true, where a missing
    database must not pass silently as a green run.
    """
    base = base_database_url()
    if base not in _reachability:
        _reachability[base] = _run_sync(_unreachable_reason(base))
    reason = _reachability[base]
    if reason is not None:
        message = (
            f"PostgreSQL at {redact_url(base)} is unreachable ({reason}); start it (`make services`) "
            "or point BATCHSERVE_TEST_DATABASE_URL at one"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with scratch_schema(base, "events_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> EventsConfig:
    """An ``EventsConfig`` for each store kind, with its own database and journal."""
    common: dict[str, Any] = {"journal_dir": tmp_path / "journal", "store_timeout_s": 5.0}
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        return EventsConfig(database_url=url, **common)
    return EventsConfig(events_path=tmp_path / "events.sqlite3", **common)


@pytest.fixture
async def store(store_config: EventsConfig) -> AsyncIterator[EventStore]:
    """An opened (migrated) store of each kind."""
    s = open_store(store_config)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def events_factory() -> Callable[..., list[Event]]:
    def factory(n: int, start: int = 0, **overrides: Any) -> list[Event]:
        return [make_event(i, **overrides) for i in range(start, start + n)]

    return factory
