"""The result cache in Redis: one entry per answer, shared by every replica that names the same Redis.

Keys are `<prefix><model>:<version>:<sha256>`; a value holds the image's size and format and the
raw score vector (msgpack), and expires after the cache's TTL. A request reads all its images'
entries in one MGET; answers are written in one pipeline, in the background. Every call is bounded
by the timeout, without retries, so a slow Redis costs one timeout at most (serving/cache.py then
leaves it alone for a while).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from batchserve.serving.cache import CachedScores

# Score vectors are float32 from every graph the repository builds; the others are accepted as written.
DTYPES = frozenset({"<f4", "<f2", "<f8"})
SCAN_BATCH = 500
# Dropping a version scans the keyspace: each SCAN call may take longer than a lookup.
MIN_SCAN_TIMEOUT_S = 1.0
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class _Wire(msgspec.Struct, array_like=True, frozen=True):
    width: int
    height: int
    format: str
    dtype: str
    logits: bytes


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Wire)


def encode(scores: CachedScores) -> bytes:
    logits = scores.logits
    return _encoder.encode(_Wire(scores.width, scores.height, scores.format, logits.dtype.str, logits.tobytes()))


def decode(raw: bytes) -> CachedScores | None:
    """The entry, or None for a value this version cannot read (written by another, or damaged)."""
    try:
        wire = _decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    if wire.dtype not in DTYPES or len(wire.logits) % np.dtype(wire.dtype).itemsize:
        return None
    logits = np.frombuffer(wire.logits, dtype=np.dtype(wire.dtype))  # read-only: a view of the bytes
    if logits.size == 0 or not np.isfinite(logits).all():
        return None
    return CachedScores(logits, wire.width, wire.height, wire.format)


class RedisStore:
    shared = True

    def __init__(self, url: str, *, timeout_s: float, prefix: str, ttl_s: float) -> None:
        self.timeout_s = timeout_s
        self.prefix = prefix
        self.ttl_ms = math.ceil(ttl_s * 1000) if ttl_s > 0 else None
        # No retries (redis-py retries by default): a failing Redis must cost one timeout at most.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=32, timeout=timeout_s, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.redis: Redis = Redis(connection_pool=pool)

    def key(self, model: str, version: int, digest: str) -> str:
        return f"{self.prefix}{model}:{version}:{digest}"

    async def get_many(self, model: str, version: int, digests: Sequence[str]) -> list[CachedScores | None]:
        keys = [self.key(model, version, d) for d in digests]
        values: list[Any] = await asyncio.wait_for(self.redis.mget(keys), self.timeout_s)
        return [None if raw is None else decode(raw) for raw in values]

    async def put_many(self, model: str, version: int, entries: Sequence[tuple[str, CachedScores]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for digest, scores in entries:
            pipe.set(self.key(model, version, digest), encode(scores), px=self.ttl_ms)
        await asyncio.wait_for(pipe.execute(), self.timeout_s)

    async def drop_version(self, model: str, version: int) -> int:
        pattern = _GLOB_SPECIAL.sub(r"\\\1", f"{self.prefix}{model}:{version}:") + "*"
        timeout = max(self.timeout_s, MIN_SCAN_TIMEOUT_S)
        cursor, dropped = 0, 0
        while True:
            cursor, keys = await asyncio.wait_for(self.redis.scan(cursor, match=pattern, count=SCAN_BATCH), timeout)
            if keys:
                dropped += int(await asyncio.wait_for(self.redis.unlink(*keys), timeout))
            if cursor == 0:
                return dropped

    async def close(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()
