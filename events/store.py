"""The event store interface: what the writer and the analytics need from a database.

The dimension-key bookkeeping lives here, once; a dialect only upserts rows and copies facts.
"""

from __future__ import annotations

import asyncio
import logging
from abc import abstractmethod
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar, TypeVar

from batchserve.events.bounded import BoundedCalls
from batchserve.events.config import EventsConfig
from batchserve.events.errors import StoreError
from batchserve.events.keycache import KeyCache
from batchserve.events.model import Event
from batchserve.events.rows import DIMENSIONS, FactRow, PreparedBatch, prepare

__all__ = ["DimKeys", "EventStore", "StaleDimensionKey", "open_store"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# Surrogate keys per dimension, by natural key.
DimKeys = dict[str, dict[Hashable, int]]

# Analytics may scan a lot more than one batch write touches.
_MIN_QUERY_TIMEOUT_S = 30.0


# The fact table's columns, in the order fact_record() yields them.
FACT_COLUMNS = (
    "event_id",
    "request_id",
    "event_ts",
    "time_key",
    "user_key",
    "image_key",
    "class_key",
    "route",
    "model_name",
    "model_version",
    "score",
    "status",
    "error_code",
    "latency_ms",
    "queue_ms",
    "inference_ms",
    "batch_size",
    "cache_hit",
    "fallback_for",
    "request_count",
)


class StaleDimensionKey(StoreError):
    """A cached surrogate key no longer exists in the store (its row was deleted)."""


class EventStore(BoundedCalls):
    """A database holding the star schema.  Not safe for concurrent ``write`` calls.

    ``open`` may be called again after it failed (the writer retries it while the database is
    down); every operation is bounded by ``timeout_s`` and raises ``StoreUnavailable`` when the
    database cannot be reached in time, ``StoreError`` for anything else it rejects.
    """

    kind: ClassVar[str]

    def __init__(self, *, timeout_s: float = 5.0, key_cache_size: int = 100_000) -> None:
        self.timeout_s = timeout_s
        self.keys = KeyCache(key_cache_size)
        self._version: int | None = None

    @property
    def is_open(self) -> bool:
        return self._version is not None

    @property
    def version(self) -> int | None:
        """Schema version found or reached by ``open``."""
        return self._version

    async def open(self, *, migrate: bool = True) -> int:
        """Connect and (unless ``migrate`` is False) apply pending migrations; returns the version.

        With ``migrate=False`` a store without the schema raises ``SchemaMissing``.
        """
        version = await self._bounded("open", self._open(migrate), self.timeout_s * 2)
        self._version = version
        return version

    async def close(self) -> None:
        self._version = None
        await self._close()

    async def ping(self) -> None:
        await self._bounded("ping", self._ping(), self.timeout_s)

    async def write(self, events: Sequence[Event]) -> int:
        """Store ``events`` in one transaction; returns how many were new (replays add 0)."""
        # Sanitising and hashing cost tens of microseconds per event: keep them off the loop.
        batch = await asyncio.to_thread(prepare, list(events))
        if not batch.facts:
            return 0
        for attempt in (1, 2):
            known = {dim: self.keys.lookup(dim, batch.dim(dim)) for dim in DIMENSIONS}
            try:
                new_keys, inserted = await self._bounded("write", self._write_prepared(batch, known), self.timeout_s)
            except StaleDimensionKey:
                if attempt == 2:
                    raise
                log.warning("cached dimension keys are stale (rows deleted in %s); reloading", self.describe())
                self.keys.clear()
                continue
            for dim, keys in new_keys.items():
                self.keys.store(dim, keys)
            return inserted
        raise AssertionError("unreachable")

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query in this store's dialect."""
        return await self._bounded("query", self._fetch(sql, params), max(self.timeout_s, _MIN_QUERY_TIMEOUT_S))

    @classmethod
    def fact_record(cls, fact: FactRow, keys: DimKeys, event_ts: Any) -> tuple[Any, ...]:
        """One fact row's values in FACT_COLUMNS order (``event_ts`` as the driver wants it)."""
        return (
            fact.event_id,
            fact.request_id,
            event_ts,
            *cls.fact_keys(fact, keys),
            fact.route,
            fact.model_name,
            fact.model_version,
            fact.score,
            fact.status,
            fact.error_code,
            fact.latency_ms,
            fact.queue_ms,
            fact.inference_ms,
            fact.batch_size,
            fact.cache_hit,
            fact.fallback_for,
            fact.request_count,
        )

    @staticmethod
    def fact_keys(fact: FactRow, keys: DimKeys) -> tuple[int, int, int | None, int | None]:
        """The surrogate keys of ``fact``'s dimensions (``keys`` covers the whole batch)."""
        return (
            keys["time"][fact.time_nk],
            keys["user"][fact.user_nk],
            None if fact.image_nk is None else keys["image"][fact.image_nk],
            None if fact.class_nk is None else keys["class"][fact.class_nk],
        )

    @abstractmethod
    async def _open(self, migrate: bool) -> int: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _ping(self) -> None: ...

    @abstractmethod
    async def _write_prepared(self, batch: PreparedBatch, known: DimKeys) -> tuple[DimKeys, int]:
        """Upsert the dimension rows missing from ``known``, insert the facts, commit.

        Returns the keys it resolved (cached only now, after the commit) and the number of new
        fact rows.  Raises ``StaleDimensionKey`` when a key from ``known`` no longer exists.
        """

    @abstractmethod
    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...


def open_store(config: EventsConfig) -> EventStore:
    """The store ``config`` names (not yet opened): Postgres with a URL, else SQLite."""
    if config.database_url:
        from batchserve.events.store_postgres import PostgresStore

        return PostgresStore(config.database_url, timeout_s=config.store_timeout_s)
    from batchserve.events.store_sqlite import SqliteStore

    return SqliteStore(config.events_path, timeout_s=config.store_timeout_s)
