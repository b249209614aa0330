"""The result cache through real `batchserve serve` processes: two processes on one Redis answer
each other's images, and a hit is marked in its answer and in its SQLite event row."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from batchserve.loadtest.server_process import ServerProcess
from tests.server.conftest import jpeg_bytes

pytestmark = pytest.mark.slow
REDIS_URL = "redis://127.0.0.1:6379/0"
QUICK_EXIT = ("--drain-delay", "0")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"batchserve-e2e:{uuid.uuid4().hex}:"
    yield prefix
    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def start(*servers: ServerProcess) -> None:
    await asyncio.gather(*(asyncio.to_thread(server.start) for server in servers))


async def test_two_processes_on_one_redis_answer_each_others_images(built_models: Path, tmp_path: Path,
                                                                    redis_prefix: str) -> None:
    shared = ("--models", "tiny", "--cache", "redis", "--cache-redis-url", REDIS_URL, "--cache-key-prefix",
              redis_prefix, *QUICK_EXIT)
    events = tmp_path / "events.sqlite3"
    one = ServerProcess(*shared, "--no-events", cwd=tmp_path / "one")
    other = ServerProcess(*shared, "--events-path", str(events), "--journal-dir", str(tmp_path / "journal"),
                          "--events-flush-interval-ms", "50", cwd=tmp_path / "other")
    image = jpeg_bytes((20, 200, 90), size=(90, 60))
    digest = hashlib.sha256(image).hexdigest()
    redis = Redis.from_url(REDIS_URL)
    await start(one, other)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            miss = await client.post(one.url + "/v1/classify", content=image)
            end = time.monotonic() + 10
            while not await redis.exists(f"{redis_prefix}tiny:1:{digest}"):  # stored after the answer
                assert time.monotonic() < end, "the first answer never reached Redis"
                await asyncio.sleep(0.02)
            hit = await client.post(other.url + "/v1/classify?top_k=1", content=image,
                                    headers={"X-Request-ID": "hit"})
            fresh = await client.post(other.url + "/v1/classify", content=jpeg_bytes(size=(50, 50)),
                                      headers={"X-Request-ID": "fresh"})
            back = await client.post(one.url + "/v1/classify", content=image)
    finally:
        await redis.aclose()
        one.stop()
        assert other.stop() == 0  # SIGTERM: its events flush before the exit
    assert miss.status_code == hit.status_code == fresh.status_code == back.status_code == 200
    assert "cache" not in miss.json() and "cache" not in fresh.json()
    assert hit.json()["cache"] == "hit" and back.json()["cache"] == "hit"
    assert hit.json()["predictions"] == miss.json()["predictions"][:1]
    with sqlite3.connect(events) as db:
        rows = db.execute("SELECT f.request_id, f.cache_hit, f.batch_size, i.sha256 FROM api_event_fact f "
                          "JOIN image_dim i USING (image_key) ORDER BY f.request_id").fetchall()
    assert [row[:3] for row in rows] == [("fresh", 0, 1), ("hit", 1, None)] and rows[1][3] == digest
