"""Test helpers for API keys: make keys in a real key store, and reach a real Redis."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from batchserve.events.keys import SqliteKeyStore, StoredKey
from batchserve.server.app import create_app
from batchserve.server.auth.gatekeeper import Gatekeeper
from batchserve.server.auth.keys import key_digest, new_key
from batchserve.server.options import build_config

REDIS_URL = os.environ.get("BATCHSERVE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class MadeKey:
    name: str
    key: str


def unique(name: str) -> str:
    """Key names are global in the shared Redis: each test gets its own."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def add_key(path: Path, name: str, scopes: tuple[str, ...], *, rate: float | None = None,
                  burst: int | None = None, expires: datetime | None = None, revoked: bool = False) -> MadeKey:
    """A key stored in the SQLite key table at `path`, as `batchserve keys create` stores it."""
    key = new_key()
    store = SqliteKeyStore(path)
    await store.open(migrate=True)
    try:
        now = datetime.now(UTC)
        await store.add(StoredKey(name, key_digest(key), scopes, rate, burst, now, expires, now if revoked else None))
    finally:
        await store.close()
    return MadeKey(name, key)


async def revoke_key(path: Path, name: str) -> None:
    store = SqliteKeyStore(path)
    await store.open(migrate=False)
    try:
        assert await store.revoke(name, datetime.now(UTC))
    finally:
        await store.close()


@asynccontextmanager
async def app_client(models_repo: Path, folder: Path, **overrides: Any,
                     ) -> AsyncIterator[tuple[httpx.AsyncClient, Litestar]]:
    """The real app (tiny model, key table and events in `folder/events.sqlite3`) driven through ASGI
    in this test's loop, and the app itself, whose gatekeeper tests can reach."""
    settings: dict[str, Any] = {
        "model_repo": models_repo, "models": ("tiny",), "events_path": folder / "events.sqlite3",
        "journal_dir": folder / "journal", "events": False, **overrides,
    }
    app = create_app(build_config(settings))
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            yield client, app


def gatekeeper_of(app: Litestar) -> Gatekeeper:
    gatekeeper = app.state["gatekeeper"]
    assert isinstance(gatekeeper, Gatekeeper)
    return gatekeeper


async def reload_keys(app: Litestar) -> None:
    """What the periodic reload does within --key-refresh-s, now."""
    directory = gatekeeper_of(app).directory
    await directory.reload_since(directory.clock())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def redis_or_skip() -> str:
    """The test Redis URL; its absence fails the run in CI (the test command starts it) and skips elsewhere."""
    host, port = "127.0.0.1", 6379
    if "BATCHSERVE_TEST_REDIS_URL" not in os.environ:
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            message = f"Redis at {host}:{port} is unreachable ({exc}); `make services` starts it"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
    return REDIS_URL
