"""The production store: PostgreSQL through an asyncpg pool, facts loaded with COPY."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Sequence
from typing import Any

import asyncpg

from batchserve.events.config import redact_url
from batchserve.events.errors import SchemaMissing, StoreError, StoreRejected, StoreUnavailable
from batchserve.events.migrate import migrate_postgres, postgres_schema_version
from batchserve.events.rows import ClassRow, ImageRow, PreparedBatch, TimeRow, UserRow
from batchserve.events.store import FACT_COLUMNS, DimKeys, EventStore, StaleDimensionKey

__all__ = ["UNAVAILABLE_ERRORS", "PostgresStore", "is_rejection"]

log = logging.getLogger(__name__)

_STAGE = "batchserve_fact_stage"
# A per-connection temp table: COPY cannot say ON CONFLICT, so facts are copied here and moved
# with INSERT ... SELECT ... ON CONFLICT (event_id) DO NOTHING, which makes replays idempotent.
_CREATE_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
    event_id uuid, request_id text, event_ts timestamptz, time_key bigint, user_key bigint,
    image_key bigint, class_key bigint, route text, model_name text, model_version integer,
    score double precision, status smallint, error_code text, latency_ms double precision,
    queue_ms double precision, inference_ms double precision, batch_size integer,
    cache_hit boolean, fallback_for text, request_count integer
) ON COMMIT DELETE ROWS
"""
_COLS = ", ".join(FACT_COLUMNS)
_MOVE_STAGE = f"INSERT INTO api_event_fact ({_COLS}) SELECT {_COLS} FROM {_STAGE} ON CONFLICT (event_id) DO NOTHING"

# Dimension upserts: one statement per dimension for the whole batch (unnest of column arrays),
# rows sorted by natural key so concurrent writers lock them in the same order.
_UPSERT = {
    "time": (
        "INSERT INTO time_dim (minute_ts, hour_ts, day_date, hour, day, weekday, month, year) "
        "SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[], $3::date[], $4::int2[], $5::int2[], "
        "$6::int2[], $7::int2[], $8::int2[]) ORDER BY 1 ON CONFLICT (minute_ts) DO NOTHING",
        "SELECT minute_ts, time_key FROM time_dim WHERE minute_ts = ANY($1::timestamptz[])",
    ),
    "user": (
        "INSERT INTO user_dim (nk, user_name, client_ip, user_agent) "
        "SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[]) ORDER BY 1 "
        "ON CONFLICT (nk) DO NOTHING",
        "SELECT nk, user_key FROM user_dim WHERE nk = ANY($1::bytea[])",
    ),
    "image": (
        "INSERT INTO image_dim (nk, sha256, filename, content_type, width, height, byte_size) "
        "SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[], "
        "$7::int8[]) ORDER BY 1 ON CONFLICT (nk) DO NOTHING",
        "SELECT nk, image_key FROM image_dim WHERE nk = ANY($1::bytea[])",
    ),
    "class": (
        "INSERT INTO class_dim (nk, model_name, class_id, class_name) "
        "SELECT * FROM unnest($1::bytea[], $2::text[], $3::int4[], $4::text[]) ORDER BY 1 "
        "ON CONFLICT (nk) DO NOTHING",
        "SELECT nk, class_key FROM class_dim WHERE nk = ANY($1::bytea[])",
    ),
}


_UNNEST_FIELDS: dict[str, tuple[str, ...]] = {
    "time": ("minute_ts", "hour_ts", "day_date", "hour", "day", "weekday", "month", "year"),
    "user": ("nk", "user_name", "client_ip", "user_agent"),
    "image": ("nk", "sha256", "filename", "content_type", "width", "height", "byte_size"),
    "class": ("nk", "model_name", "class_id", "class_name"),
}


def _columns(dim: str, rows: list[Any]) -> list[list[Any]]:
    """Column arrays for ``unnest``, in the order of the upsert's column list."""
    return [[getattr(row, f) for row in rows] for f in _UNNEST_FIELDS[dim]]


# Errors that mean "the database is not there right now" rather than "it refused this".
UNAVAILABLE_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)

# SQLSTATE classes that blame the rows themselves: 22 data exception (a value out of range, bad
# encoding), 23 integrity constraint violation (a CHECK or NOT NULL an operator added), 54 program
# limit exceeded (a row too large to index).  Anything else (connection, locks, permissions, a
# missing table) passes when the database or its operator recovers, so the events wait in the journal.
_REJECTING_CLASSES = frozenset({"22", "23", "54"})
APPLICATION_NAME = "batchserve-events"


def is_rejection(exc: BaseException) -> bool:
    """True when retrying the same rows cannot succeed: the server or the driver refuses their values."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(getattr(exc, "sqlstate", "") or "")[:2] in _REJECTING_CLASSES
    # The driver's own DataError (a value it cannot encode) is an InterfaceError *and* a ValueError;
    # other InterfaceErrors are about the connection.
    return isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)


async def open_pool(url: str, **settings: Any) -> asyncpg.Pool:
    """An asyncpg pool with its first connections made; a failed or cancelled start leaves none open."""
    pool = asyncpg.create_pool(url, **settings)
    try:
        await pool
    except BaseException:
        pool.terminate()
        raise
    return pool


class PostgresStore(EventStore):
    kind = "postgres"

    def __init__(self, url: str, *, timeout_s: float = 5.0, max_connections: int = 4) -> None:
        super().__init__(timeout_s=timeout_s)
        self._url = url
        self._max_connections = max_connections
        self._pool: asyncpg.Pool | None = None

    def describe(self) -> str:
        return f"postgres {redact_url(self._url)}"

    async def _init_connection(self, con: asyncpg.Connection) -> None:
        await con.execute(_CREATE_STAGE)

    async def _ensure_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await open_pool(
                self._url,
                min_size=1,
                max_size=self._max_connections,
                timeout=self.timeout_s,  # connect timeout; asyncpg's default is 60 s
                init=self._init_connection,
                # Tells the writer's sessions from the statistics' ones in pg_stat_activity.
                server_settings={"application_name": APPLICATION_NAME},
            )
        return self._pool

    async def _open(self, migrate: bool) -> int:
        pool = await self._ensure_pool()
        async with pool.acquire() as con:
            version = await (migrate_postgres(con) if migrate else postgres_schema_version(con))
        if version == 0:
            raise SchemaMissing(f"{self.describe()} holds no event schema: run `batchserve db upgrade`")
        return version

    def _reset_connections(self) -> None:
        # Closing the sockets makes every await on them fail now instead of when the server
        # answers; the next operation opens a fresh pool.
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def _close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.timeout_s)
            except (TimeoutError, *UNAVAILABLE_ERRORS):
                pool.terminate()

    async def _ping(self) -> None:
        pool = await self._ensure_pool()
        async with pool.acquire() as con:
            await con.fetchval("SELECT 1")

    async def _write_prepared(self, batch: PreparedBatch, known: DimKeys) -> tuple[DimKeys, int]:
        pool = await self._ensure_pool()
        new_keys: DimKeys = {}
        async with pool.acquire() as con, con.transaction():
            for dim in known:
                rows: list[TimeRow | UserRow | ImageRow | ClassRow] = [
                    row for nk, row in batch.dim(dim).items() if nk not in known[dim]
                ]
                if not rows:
                    continue
                upsert, select = _UPSERT[dim]
                columns = _columns(dim, rows)
                await con.execute(upsert, *columns)
                # A separate statement sees rows that concurrent writers committed meanwhile.
                found: dict[Hashable, int] = {r[0]: r[1] for r in await con.fetch(select, columns[0])}
                if len(found) != len(rows):
                    raise StoreError(f"{dim}_dim upsert resolved {len(found)} of {len(rows)} keys")
                new_keys[dim] = found
            keys = {dim: {**known[dim], **new_keys.get(dim, {})} for dim in known}
            records = [self.fact_record(f, keys, f.event_ts) for f in batch.facts]
            await con.copy_records_to_table(_STAGE, records=records, columns=FACT_COLUMNS)
            status = await con.execute(_MOVE_STAGE)
        return new_keys, int(status.rsplit(" ", 1)[-1])

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        pool = await self._ensure_pool()
        async with pool.acquire() as con:
            return [tuple(r) for r in await con.fetch(sql, *params)]

    def _translate(self, exc: Exception, what: str) -> StoreError:
        if isinstance(exc, asyncpg.ForeignKeyViolationError):
            return StaleDimensionKey(f"{self.describe()}: {exc}")
        if is_rejection(exc):
            return StoreRejected(f"{self.describe()}: {what} rejected: {type(exc).__name__}: {exc}")
        if isinstance(exc, UNAVAILABLE_ERRORS):
            return StoreUnavailable(f"{self.describe()}: {what} failed: {type(exc).__name__}: {exc}")
        if isinstance(exc, asyncpg.UndefinedTableError):
            return SchemaMissing(f"{self.describe()}: {exc} (run `batchserve db upgrade`)")
        return StoreError(f"{self.describe()}: {what} failed: {type(exc).__name__}: {exc}")
