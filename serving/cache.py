"""The result cache: an image seen before is answered from its cached scores, without decoding or batching.

An answer is keyed by the SHA-256 of the image's bytes, the model and its version, and what is
kept is the model's whole score vector (its logits), so one entry answers any `top_k`, V1 or V2.
The store is this process's memory (bounded in bytes, least recently used first out) or a Redis
shared by every replica that names it (serving/cache_redis.py).

Entries never outlive what they were computed by: when a version this process served is replaced
(a reload of a changed file) its entries are dropped before the new version reads the cache, and
the entries of a version no longer loaded (unloaded, or retired by a newer one) are dropped by
the sweep the serving core runs.

The cache may fail, never the request: a Redis that errs or does not answer within its timeout
makes the image a miss (or its answer unstored), is counted, and is left alone for a while so a
dead Redis costs no request a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from batchserve.events.ratelog import RateLimitedLog
from batchserve.serving.cache_config import CacheConfig
from batchserve.serving.registry import LoadedModel

log = logging.getLogger("batchserve.cache")

# Hashing runs at ~1.3 GB/s here: up to this many bytes (~50 µs) it is cheaper on the event loop
# than the hand-off to a thread; a larger request (bodies go up to 16 MiB) is hashed off the loop.
INLINE_HASH_BYTES = 64 * 1024
# After a Redis failure, how long the cache leaves Redis alone (every image a miss meanwhile).
RETRY_REDIS_AFTER_S = 2.0

VersionKey = tuple[str, int]


@dataclass(frozen=True)
class CachedScores:
    """What the cache keeps of one answer: the model's whole score vector, and what the event
    store wants to know of the image (its size and format), since a hit never decodes it."""

    logits: np.ndarray  # one row, owning its memory, read-only
    width: int
    height: int
    format: str

    @classmethod
    def of(cls, logits: np.ndarray, width: int, height: int, format: str) -> CachedScores:
        # A copy: an answer's logits are a view of its whole batch's output, which a view would keep alive.
        row = np.array(logits, copy=True)
        row.flags.writeable = False
        return cls(row, width, height, format)


@dataclass(frozen=True)
class CacheHit:
    """A sample answered from the cache: the image's digest and the scores found under it."""

    sha256: str
    scores: CachedScores


@dataclass
class CacheStats:
    hits: Counter[str] = field(default_factory=Counter)  # by model
    misses: Counter[str] = field(default_factory=Counter)
    evictions: Counter[str] = field(default_factory=Counter)  # by reason: capacity, expired, version
    store_errors: int = 0  # failed or timed-out calls to a shared store
    writes_skipped: int = 0  # answers not stored because too many writes were already pending


class CacheStore(Protocol):
    """Where entries live. Calls may raise (a shared store's outage); the cache absorbs that."""

    shared: bool  # True when other processes read and write the same entries

    async def get_many(self, model: str, version: int, digests: Sequence[str]) -> list[CachedScores | None]: ...

    async def put_many(self, model: str, version: int, entries: Sequence[tuple[str, CachedScores]]) -> None: ...

    async def drop_version(self, model: str, version: int) -> int:
        """Remove every entry of the version; returns how many went."""

    async def close(self) -> None: ...


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def digests_of(blobs: Sequence[bytes], executor: Executor) -> list[str]:
    """The SHA-256 of each blob: on the event loop when they are small, else in `executor`."""
    if sum(len(b) for b in blobs) <= INLINE_HASH_BYTES:
        return [digest(b) for b in blobs]

    def hash_all() -> list[str]:  # hashlib releases the GIL on large buffers
        return [digest(b) for b in blobs]

    return await asyncio.get_running_loop().run_in_executor(executor, hash_all)


class ResultCache:
    """The cache as the classifier sees it: look up, keep, forget; counted, and never failing."""

    def __init__(self, store: CacheStore, *, stats: CacheStats | None = None,
                 retry_after_s: float = RETRY_REDIS_AFTER_S, max_pending_writes: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.stats = stats or CacheStats()
        self.retry_after_s = retry_after_s
        self.max_pending_writes = max_pending_writes
        self.clock = clock
        self._down_until = float("-inf")
        # The model object each version's entries were computed by: another object under the same
        # name and version is a replacement, whose first lookup drops the old entries.
        self._versions: dict[VersionKey, weakref.ref[LoadedModel]] = {}
        self._dropping: dict[VersionKey, asyncio.Task[None]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        self._warn = RateLimitedLog(log, logging.WARNING, interval_s=30.0)

    # ---- the request path ------------------------------------------------------------------
    async def lookup(self, model: LoadedModel, digests: Sequence[str]) -> list[CachedScores | None]:
        """Each image's cached scores, or None (a miss: not cached, or the store did not answer)."""
        await self._current(model)
        found: list[CachedScores | None] = [None] * len(digests)
        if self._available():
            try:
                found = await self.store.get_many(model.name, model.version, digests)
            except Exception as exc:  # noqa: BLE001 - whatever the store does, the images are classified
                self._failed("reading", exc)
        hits = sum(1 for scores in found if scores is not None)
        if hits:
            self.stats.hits[model.name] += hits
        if hits < len(found):
            self.stats.misses[model.name] += len(found) - hits
        return found

    async def keep(self, model: LoadedModel, entries: Sequence[tuple[str, CachedScores]]) -> None:
        """Store fresh answers of `model`. A shared store is written in the background: the
        request that computed them does not wait for it."""
        if not entries or not self._available():
            return
        if not self.store.shared:
            await self._put(model, entries)
            return
        if len(self._writes) >= self.max_pending_writes:
            self.stats.writes_skipped += len(entries)
            return
        task = asyncio.get_running_loop().create_task(self._put(model, entries), name="cache-write")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _put(self, model: LoadedModel, entries: Sequence[tuple[str, CachedScores]]) -> None:
        try:
            await self.store.put_many(model.name, model.version, entries)
        except Exception as exc:  # noqa: BLE001 - an answer left unstored is only a later miss
            self._failed("writing", exc)

    # ---- versions ----------------------------------------------------------------------------
    async def _current(self, model: LoadedModel) -> None:
        """Drop the entries of a replaced version before its successor reads or writes any."""
        key = (model.name, model.version)
        known = self._versions.get(key)
        if known is not None and known() is model:
            pending = self._dropping.get(key)
            if pending is not None:
                await asyncio.shield(pending)
            return
        self._versions[key] = weakref.ref(model)
        if known is not None:
            log.info("%s v%d was replaced: dropping its cached answers", *key)
            await asyncio.shield(self._drop_once(key))

    def _drop_once(self, key: VersionKey) -> asyncio.Task[None]:
        task = self._dropping.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._drop(key), name=f"cache-drop-{key[0]}")
            self._dropping[key] = task
            task.add_done_callback(lambda _: self._dropping.pop(key, None))
        return task

    async def _drop(self, key: VersionKey) -> None:
        try:
            dropped = await self.store.drop_version(*key)
        except Exception as exc:  # noqa: BLE001 - counted; the entries expire on their own
            self._failed("dropping a version's entries in", exc)
            return
        self.stats.evictions["version"] += dropped

    async def forget_unloaded(self, loaded: Iterable[LoadedModel]) -> None:
        """Drop the entries of every version this cache served that is no longer among `loaded`."""
        current = {(m.name, m.version): m for m in loaded}
        for key, ref in list(self._versions.items()):
            served = ref()
            if served is None or served is not current.get(key):
                del self._versions[key]
                log.info("%s v%d is no longer loaded: dropping its cached answers", *key)
                await asyncio.shield(self._drop_once(key))

    # ---- the store's health -----------------------------------------------------------------
    def _available(self) -> bool:
        return self.clock() >= self._down_until

    def _failed(self, doing: str, exc: Exception) -> None:
        self.stats.store_errors += 1
        self._down_until = self.clock() + self.retry_after_s
        self._warn("result cache: %s the store failed (%s: %s); serving without the cache for %g s",
                   doing, type(exc).__name__, str(exc) or "timed out", self.retry_after_s)

    async def close(self, timeout_s: float = 1.0) -> None:
        """Finish (for at most `timeout_s`) the writes still pending, then close the store."""
        pending = set(self._writes) | set(self._dropping.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.store.close()


def open_cache(config: CacheConfig) -> ResultCache | None:
    """The cache `config` asks for (not connected yet: a Redis is reached on first use), or None."""
    if config.cache == "memory":
        from batchserve.serving.cache_memory import MemoryStore

        stats = CacheStats()
        return ResultCache(MemoryStore(config.cache_max_bytes, config.cache_ttl_s, stats), stats=stats)
    if config.cache == "redis":
        from batchserve.serving.cache_redis import RedisStore

        assert config.cache_redis_url is not None  # CacheConfig refuses redis without a URL
        return ResultCache(RedisStore(config.cache_redis_url, timeout_s=config.cache_redis_timeout_s,
                                      prefix=config.cache_key_prefix, ttl_s=config.cache_ttl_s))
    return None
