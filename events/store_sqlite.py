"""The embedded store: one SQLite file in WAL mode, driven from dedicated threads.

Each connection lives on its own single-thread executor (sqlite3 connections belong to the
thread that made them), so a whole batch — dimension upserts, the SELECTs that resolve their
keys and ``executemany`` of the facts, one transaction — runs as one function on that thread:
it costs the event loop one hop and never blocks it.  Reads for analytics use a second
connection: WAL lets them run while the writer commits.

This is plain sqlite3 rather than aiosqlite on purpose. aiosqlite's public API hops to its
thread once per statement, so a flush would cost a dozen round trips through the event loop
instead of one; and the schema migrations (``migrate.py``) are synchronous sqlite3 code that
takes the raw connection, which aiosqlite exposes only through private attributes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

from batchserve.events.errors import SchemaMissing, StoreError, StoreRejected, StoreUnavailable
from batchserve.events.migrate import migrate_sqlite, sqlite_schema_version
from batchserve.events.rows import PreparedBatch
from batchserve.events.store import FACT_COLUMNS, DimKeys, EventStore, StaleDimensionKey

__all__ = ["SqliteStore", "format_ts", "parse_ts"]

T = TypeVar("T")
_CHUNK = 500  # bound on "IN (?, ?, ...)" lists; old SQLite builds cap parameters at 999


def format_ts(ts: datetime) -> str:
    """Fixed-width UTC text: lexical order is time order, and microseconds survive."""
    ts = ts.astimezone(UTC)
    return (
        f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}T{ts.hour:02d}:{ts.minute:02d}:{ts.second:02d}.{ts.microsecond:06d}Z"
    )


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _format_date(d: date) -> str:
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}"


_INSERT = {
    "time": "INSERT INTO time_dim (minute_ts, hour_ts, day_date, hour, day, weekday, month, year) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (minute_ts) DO NOTHING",
    "user": "INSERT INTO user_dim (nk, user_name, client_ip, user_agent) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (nk) DO NOTHING",
    "image": "INSERT INTO image_dim (nk, sha256, filename, content_type, width, height, byte_size) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (nk) DO NOTHING",
    "class": "INSERT INTO class_dim (nk, model_name, class_id, class_name) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (nk) DO NOTHING",
}
_SELECT = {
    "time": "SELECT minute_ts, time_key FROM time_dim WHERE minute_ts IN ({})",
    "user": "SELECT nk, user_key FROM user_dim WHERE nk IN ({})",
    "image": "SELECT nk, image_key FROM image_dim WHERE nk IN ({})",
    "class": "SELECT nk, class_key FROM class_dim WHERE nk IN ({})",
}
_INSERT_FACT = (
    f"INSERT INTO api_event_fact ({', '.join(FACT_COLUMNS)}) VALUES ({', '.join('?' * len(FACT_COLUMNS))}) "
    "ON CONFLICT (event_id) DO NOTHING"
)


def _dim_params(dim: str, row: Any) -> tuple[Any, ...]:
    if dim == "time":
        return (
            format_ts(row.minute_ts),
            format_ts(row.hour_ts),
            _format_date(row.day_date),
            row.hour,
            row.day,
            row.weekday,
            row.month,
            row.year,
        )
    if dim == "user":
        return (row.nk, row.user_name, row.client_ip, row.user_agent)
    if dim == "image":
        return (row.nk, row.sha256, row.filename, row.content_type, row.width, row.height, row.byte_size)
    return (row.nk, row.model_name, row.class_id, row.class_name)


class _Thread:
    """One sqlite3 connection pinned to one thread."""

    def __init__(self, name: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.con: sqlite3.Connection | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self.con is None:
                raise StoreUnavailable("the SQLite connection is closed")
            return fn(self.con)

        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def connect(self, path: Path, busy_timeout_ms: int, *, readonly: bool) -> None:
        def connect() -> None:
            if self.con is not None:
                return
            con = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
            try:
                if not readonly:
                    con.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode survives a process crash; only power loss can lose the last commits.
                con.execute("PRAGMA synchronous=NORMAL")
                con.execute("PRAGMA foreign_keys=ON")
                con.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
                if readonly:
                    con.execute("PRAGMA query_only=ON")
            except BaseException:
                con.close()
                raise
            self.con = con

        await asyncio.get_running_loop().run_in_executor(self.executor, connect)

    async def close(self) -> None:
        def close() -> None:
            if self.con is not None:
                self.con.close()
                self.con = None

        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, close)
        finally:
            self.executor.shutdown(wait=False)


class SqliteStore(EventStore):
    kind = "sqlite"

    def __init__(self, path: Path | str, *, timeout_s: float = 5.0) -> None:
        super().__init__(timeout_s=timeout_s)
        self.path = Path(path)
        self._writer: _Thread | None = None
        self._reader: _Thread | None = None

    def describe(self) -> str:
        return f"sqlite {self.path}"

    async def _open(self, migrate: bool) -> int:
        if not migrate and not self.path.exists():
            raise SchemaMissing(f"no events database at {self.path}: run `batchserve db upgrade` or serve first")
        busy_ms = int(self.timeout_s * 1000)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = _Thread("events-sqlite-writer")
        await self._writer.connect(self.path, busy_ms, readonly=False)
        version = await self._writer.run(migrate_sqlite if migrate else sqlite_schema_version)
        if version == 0:
            raise SchemaMissing(f"{self.path} holds no event schema: run `batchserve db upgrade`")
        if self._reader is None:
            self._reader = _Thread("events-sqlite-reader")
        await self._reader.connect(self.path, busy_ms, readonly=True)
        return version

    async def _close(self) -> None:
        threads, self._writer, self._reader = (self._writer, self._reader), None, None
        for thread in threads:
            if thread is not None:
                await thread.close()

    def _require(self, thread: _Thread | None) -> _Thread:
        if thread is None:
            raise StoreUnavailable(f"{self.describe()} is not open")
        return thread

    async def _ping(self) -> None:
        await self._require(self._writer).run(lambda con: con.execute("SELECT 1").fetchone())

    async def _write_prepared(self, batch: PreparedBatch, known: DimKeys) -> tuple[DimKeys, int]:
        return await self._require(self._writer).run(lambda con: self._write_sync(con, batch, known))

    def _write_sync(self, con: sqlite3.Connection, batch: PreparedBatch, known: DimKeys) -> tuple[DimKeys, int]:
        con.execute("BEGIN IMMEDIATE")
        try:
            new_keys: DimKeys = {}
            for dim in known:
                rows = [row for nk, row in batch.dim(dim).items() if nk not in known[dim]]
                if rows:
                    new_keys[dim] = self._upsert_sync(con, dim, rows)
            keys = {dim: {**known[dim], **new_keys.get(dim, {})} for dim in known}
            before = con.total_changes
            con.executemany(
                _INSERT_FACT,
                [self.fact_record(f, keys, format_ts(f.event_ts)) for f in batch.facts],
            )
            inserted = con.total_changes - before
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return new_keys, inserted

    @staticmethod
    def _upsert_sync(con: sqlite3.Connection, dim: str, rows: list[Any]) -> dict[Hashable, int]:
        params = [_dim_params(dim, row) for row in rows]
        con.executemany(_INSERT[dim], params)
        # Time rows are keyed by datetime in memory and by text on disk; map back.
        by_db_key: dict[Any, Hashable] = {
            p[0]: (row.minute_ts if dim == "time" else row.nk) for p, row in zip(params, rows, strict=True)
        }
        db_keys = list(by_db_key)
        found: dict[Hashable, int] = {}
        for i in range(0, len(db_keys), _CHUNK):
            chunk = db_keys[i : i + _CHUNK]
            sql = _SELECT[dim].format(", ".join("?" * len(chunk)))
            for db_key, key in con.execute(sql, chunk):
                found[by_db_key[db_key]] = key
        if len(found) != len(rows):
            raise StoreError(f"{dim}_dim upsert resolved {len(found)} of {len(rows)} keys")
        return found

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._require(self._reader).run(lambda con: con.execute(sql, tuple(params)).fetchall())

    def _translate(self, exc: Exception, what: str) -> StoreError:
        if isinstance(exc, sqlite3.IntegrityError) and "FOREIGN KEY" in str(exc):
            return StaleDimensionKey(f"{self.describe()}: {exc}")
        if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError, OverflowError)) or (
            isinstance(exc, (sqlite3.ProgrammingError, sqlite3.InterfaceError)) and "binding parameter" in str(exc)
        ):
            # A constraint or trigger refused a row, or a value cannot be bound: the rows are to
            # blame, so retrying them cannot help.
            return StoreRejected(f"{self.describe()}: {what} rejected: {type(exc).__name__}: {exc}")
        if isinstance(exc, sqlite3.OperationalError):
            message = str(exc)
            if "no such table" in message:
                return SchemaMissing(f"{self.describe()}: {message} (run `batchserve db upgrade`)")
            # Locked, busy, disk full, I/O error: conditions that pass; retry later.
            return StoreUnavailable(f"{self.describe()}: {what} failed: {message}")
        if isinstance(exc, OSError):
            # The file's directory is missing or unwritable (an unmounted volume, a full disk).
            return StoreUnavailable(f"{self.describe()}: {what} failed: {exc}")
        return StoreError(f"{self.describe()}: {what} failed: {type(exc).__name__}: {exc}")
