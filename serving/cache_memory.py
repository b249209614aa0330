"""The result cache in this process's memory: bounded in bytes, least recently used out first.

Only the event loop's thread touches it, so it needs no lock. An entry's size counts its scores
and what holding it costs besides (key, digest text, bookkeeping: measured, see
ENTRY_OVERHEAD_BYTES), so `max_bytes` bounds the memory really used. Expired entries leave when
they are next looked up, or when room is needed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from batchserve.serving.cache import CachedScores, CacheStats

# Python objects around one entry (key tuple, the digest's text, the ordered dict's node, the entry,
# the array header, the version index's set slot): ~650 bytes measured with tracemalloc.
ENTRY_OVERHEAD_BYTES = 650

Key = tuple[str, int, str]


@dataclass(slots=True)
class _Entry:
    scores: CachedScores
    size: int
    expires_at: float | None


class MemoryStore:
    shared = False

    def __init__(self, max_bytes: int, ttl_s: float, stats: CacheStats,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.stats = stats
        self.clock = clock
        self.bytes = 0
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._by_version: dict[tuple[str, int], set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, model: str, version: int, digest: str) -> CachedScores | None:
        key = (model, version, digest)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and self.clock() >= entry.expires_at:
            self._remove(key, "expired")
            return None
        self._entries.move_to_end(key)
        return entry.scores

    def put(self, model: str, version: int, digest: str, scores: CachedScores) -> None:
        size = scores.logits.nbytes + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        key = (model, version, digest)
        if key in self._entries:
            self._remove(key, None)
        expires_at = self.clock() + self.ttl_s if self.ttl_s > 0 else None
        self._entries[key] = _Entry(scores, size, expires_at)
        self._by_version.setdefault((model, version), set()).add(digest)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._remove(next(iter(self._entries)), "capacity")

    def drop(self, model: str, version: int) -> int:
        digests = self._by_version.pop((model, version), set())
        for digest in digests:
            entry = self._entries.pop((model, version, digest))
            self.bytes -= entry.size
        return len(digests)

    def _remove(self, key: Key, reason: str | None) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size
        model, version, digest = key
        digests = self._by_version[(model, version)]
        digests.discard(digest)
        if not digests:
            del self._by_version[(model, version)]
        if reason is not None:
            self.stats.evictions[reason] += 1

    # ---- CacheStore ----------------------------------------------------------------------------
    async def get_many(self, model: str, version: int, digests: Sequence[str]) -> list[CachedScores | None]:
        return [self.get(model, version, d) for d in digests]

    async def put_many(self, model: str, version: int, entries: Sequence[tuple[str, CachedScores]]) -> None:
        for digest, scores in entries:
            self.put(model, version, digest, scores)

    async def drop_version(self, model: str, version: int) -> int:
        return self.drop(model, version)

    async def close(self) -> None:
        self._entries.clear()
        self._by_version.clear()
        self.bytes = 0
