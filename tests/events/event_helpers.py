"""Shared helpers of the event pipeline tests (plain functions; fixtures live in conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from batchserve.events.model import Event
from batchserve.events.store import EventStore


def with_search_path(url: str, schema: str) -> str:
    """``url`` whose connections use ``schema`` (asyncpg passes unknown query keys as settings)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "search_path"] + [("search_path", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Wait for ``predicate`` to hold, checking every few milliseconds; fail after ``timeout``.

    The timeout only bounds a broken run: passing never depends on how fast the machine is.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


async def wait_until_async(
    check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition"
) -> None:
    """``wait_until`` for a condition that needs a query to check (a database's view of things)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


# What an event carries when its request failed before any image was read.
WITHOUT_IMAGE: dict[str, Any] = {
    "image_sha256": None,
    "filename": None,
    "content_type": None,
    "width": None,
    "height": None,
    "image_bytes": None,
    "class_id": None,
    "class_label": None,
    "score": None,
    "batch_size": None,
}


def make_event(i: int = 0, **overrides: Any) -> Event:
    """A plausible successful classification, varied by ``i``."""
    fields: dict[str, Any] = {
        "event_id": uuid.uuid4().hex,
        "request_id": f"req-{i}",
        "ts": T0 + timedelta(seconds=7 * i, microseconds=i),
        "route": "v1",
        "model": "tiny",
        "model_version": 1,
        "user": f"key-{i % 3}",
        "client_ip": f"203.0.113.{i % 250}",
        "user_agent": "pytest-agent/1.0",
        "image_sha256": f"{i % 4:064x}",
        "filename": f"img{i % 4}.jpg",
        "content_type": "image/jpeg",
        "width": 640,
        "height": 480,
        "image_bytes": 10_000 + i % 4,
        "class_id": i % 5,
        "class_label": f"class-{i % 5}",
        "score": 0.5 + (i % 5) / 10,
        "status": 200,
        "latency_ms": 10.0 + i,
        "queue_ms": 1.0,
        "inference_ms": 5.0,
        "batch_size": 1 + i % 4,
    }
    fields.update(overrides)
    return Event(**fields)


async def count_rows(s: EventStore, table: str = "api_event_fact") -> int:
    rows = await s.fetch(f"SELECT count(*) FROM {table}")
    return int(rows[0][0])


def closed_port() -> int:
    """A local TCP port nothing listens on (connections are refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_port(url: str, port: int, host: str = "127.0.0.1") -> str:
    """``url`` pointed at ``host:port``, keeping user, database and settings."""
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def target_of(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def execute_sql(url: str, sql: str) -> None:
    """One statement on its own connection, on a private loop in a private thread (callable from
    synchronous fixtures, also while pytest-asyncio's loop runs)."""
    async def run() -> None:
        con = await asyncpg.connect(url, timeout=10)
        try:
            await con.execute(sql)
        finally:
            await con.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run()).result()


@contextlib.contextmanager
def scratch_schema(base_url: str, prefix: str) -> Iterator[str]:
    """A URL of `base_url`'s database whose connections live in a fresh schema, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    execute_sql(base_url, f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(base_url, schema)
    finally:
        execute_sql(base_url, f'DROP SCHEMA "{schema}" CASCADE')
