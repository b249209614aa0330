"""`batchserve db backup`: a consistent snapshot of the event store, table by table, into a bucket.

Every table is read from one snapshot — PostgreSQL: one REPEATABLE READ READ ONLY transaction;
SQLite: one read transaction, which in WAL mode sees the file as of its first read while the
writer goes on committing — so facts never name a dimension row the backup lacks and the counts
in the manifest are the rows in the objects. Each table streams from the database through gzip
into its object (backup_bucket.py); the manifest goes up last (backup_format.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from batchserve import __version__
from batchserve.events.backup_bucket import DEFAULT_PART_BYTES, BackupBucket, ObjectWriter
from batchserve.events.backup_db import (
    NO_TIMEOUTS,
    SqliteThread,
    close_postgres,
    connect_postgres,
    pg_columns,
    pg_failure,
    pg_tables,
    sqlite_columns,
    sqlite_tables,
)
from batchserve.events.backup_format import (
    ENCODINGS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SUFFIXES,
    BackupError,
    Column,
    Manifest,
    Source,
    SourceKind,
    TableEntry,
    backup_id,
    encode_frame,
    encode_manifest,
)
from batchserve.events.config import EventsConfig, redact_url
from batchserve.events.migrate import latest_version, postgres_schema_version, sqlite_schema_version
from batchserve.events.store_postgres import UNAVAILABLE_ERRORS
from batchserve.model_repo.location import ObjectStoreLocation

__all__ = ["BackupOptions", "run_backup"]

Sink = Callable[[bytes], Coroutine[Any, Any, None]]
Progress = Callable[[TableEntry], Awaitable[None]]
_ROWS_PER_FRAME = 2000


@dataclass(frozen=True)
class BackupOptions:
    endpoint_url: str | None = None
    part_bytes: int = DEFAULT_PART_BYTES  # multipart part size (S3: at least 5 MiB)
    compress_level: int = 6
    connect_timeout_s: float = 10.0
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


class Snapshot(Protocol):
    kind: SourceKind
    database: str
    schema_version: int

    async def tables(self) -> list[str]: ...

    async def columns(self, table: str) -> list[Column]: ...

    async def dump(self, table: str, columns: list[Column], sink: Sink) -> int:
        """Send the table's rows to ``sink`` in this kind's encoding; returns how many."""


class PostgresSnapshot:
    kind: SourceKind = "postgres"

    def __init__(self, con: asyncpg.Connection, url: str, schema: str, version: int) -> None:
        self._con = con
        self._url = url
        self._schema = schema
        self.database = f"postgres {redact_url(url)}"
        self.schema_version = version

    async def tables(self) -> list[str]:
        return await pg_tables(self._con, self._schema)

    async def columns(self, table: str) -> list[Column]:
        return [column for column, _identity in await pg_columns(self._con, self._schema, table)]

    async def dump(self, table: str, columns: list[Column], sink: Sink) -> int:
        try:
            status = await self._con.copy_from_table(
                table, schema_name=self._schema, columns=[c.name for c in columns], output=sink, format="binary"
            )
        except (asyncpg.PostgresError, *UNAVAILABLE_ERRORS) as exc:
            raise pg_failure(exc, self._url, f"COPY of {table}") from None
        return int(status.rsplit(" ", 1)[-1])


@contextlib.asynccontextmanager
async def postgres_snapshot(url: str, timeout_s: float) -> AsyncIterator[PostgresSnapshot]:
    con = await connect_postgres(url, timeout_s)
    try:
        try:
            # Never committed: closing the connection ends it.
            await con.transaction(isolation="repeatable_read", readonly=True).start()
            await con.execute(NO_TIMEOUTS)
            schema = await con.fetchval("SELECT current_schema()")
            version = await postgres_schema_version(con)
        except (asyncpg.PostgresError, *UNAVAILABLE_ERRORS) as exc:
            raise pg_failure(exc, url, "reading the schema version") from None
        if schema is None:
            raise BackupError(f"postgres {redact_url(url)}: the search_path names no existing schema")
        yield PostgresSnapshot(con, url, schema, version)
    finally:
        await close_postgres(con, timeout_s)


class SqliteSnapshot:
    kind: SourceKind = "sqlite"

    def __init__(self, thread: SqliteThread, version: int) -> None:
        self._thread = thread
        self.database = f"sqlite {thread.path}"
        self.schema_version = version

    async def tables(self) -> list[str]:
        return await self._thread.run(sqlite_tables)

    async def columns(self, table: str) -> list[Column]:
        return await self._thread.run(sqlite_columns, table)

    async def dump(self, table: str, columns: list[Column], sink: Sink) -> int:
        names = ", ".join(f'"{c.name}"' for c in columns)
        cursor = await self._thread.run(lambda con: con.execute(f'SELECT {names} FROM "{table}"'))

        def next_frame(_con: sqlite3.Connection) -> tuple[int, bytes]:
            rows = cursor.fetchmany(_ROWS_PER_FRAME)
            return len(rows), encode_frame(rows) if rows else b""

        total = 0
        while True:
            count, frame = await self._thread.run(next_frame)
            if not count:
                return total
            total += count
            await sink(frame)


@contextlib.asynccontextmanager
async def sqlite_snapshot(path: Path, timeout_s: float) -> AsyncIterator[SqliteSnapshot]:
    if not await asyncio.to_thread(path.is_file):
        raise BackupError(f"no events database at {path}: nothing to back up (--events-path names the SQLite file)")
    thread = SqliteThread(path, "events-backup-sqlite")
    try:
        await thread.open(readonly=True, busy_timeout_s=timeout_s)

        def begin(con: sqlite3.Connection) -> int:
            # The first read fixes what the whole transaction sees.
            con.execute("BEGIN")
            return sqlite_schema_version(con)

        version = await thread.run(begin)
        yield SqliteSnapshot(thread, version)
    finally:
        await thread.close()


def _snapshot(config: EventsConfig, timeout_s: float) -> contextlib.AbstractAsyncContextManager[Snapshot]:
    if config.database_url:
        return postgres_snapshot(config.database_url, timeout_s)
    return sqlite_snapshot(config.events_path, timeout_s)


async def run_backup(
    config: EventsConfig,
    target: ObjectStoreLocation,
    options: BackupOptions | None = None,
    progress: Progress | None = None,
) -> tuple[str, Manifest]:
    """Back the event store up under ``target``; returns the backup's URL and its manifest."""
    options = options or BackupOptions()
    bucket = await asyncio.to_thread(BackupBucket, target, options.endpoint_url)
    await asyncio.to_thread(bucket.check_bucket)
    async with _snapshot(config, options.connect_timeout_s) as snapshot:
        created = options.now().astimezone(UTC)
        name = backup_id(created)
        _check_version(snapshot)
        if await asyncio.to_thread(bucket.list_keys, f"{name}/"):
            raise BackupError(f"{bucket.url(name)} already holds objects: start the backup again")
        try:
            entries = await _dump_tables(snapshot, bucket, name, options, progress)
        except BackupError as exc:
            raise BackupError(
                f"{exc} ({bucket.url(name)} is left without {MANIFEST}: an incomplete backup, "
                "which restore never picks)"
            ) from None
    manifest = Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        backup_id=name,
        created_at=_iso(created),
        completed_at=_iso(datetime.now(UTC)),
        source=Source(kind=snapshot.kind, database=snapshot.database),
        schema_version=snapshot.schema_version,
        batchserve_version=__version__,
        compression="gzip",
        tables=entries,
    )
    # Last: its presence is what makes the backup complete.
    await asyncio.to_thread(bucket.put, f"{name}/{MANIFEST}", encode_manifest(manifest))
    return bucket.url(name), manifest


async def _dump_tables(
    snapshot: Snapshot, bucket: BackupBucket, name: str, options: BackupOptions, progress: Progress | None
) -> list[TableEntry]:
    entries: list[TableEntry] = []
    for table in await snapshot.tables():
        columns = await snapshot.columns(table)
        relative = f"{name}/{table}.{SUFFIXES[snapshot.kind]}"
        writer = ObjectWriter(bucket, relative, part_bytes=options.part_bytes, level=options.compress_level)
        try:
            rows = await snapshot.dump(table, columns, writer.write)
            stored = await writer.close()
        except BaseException:
            await writer.abort()
            raise
        entry = TableEntry(
            name=table,
            object=relative.rsplit("/", 1)[1],
            encoding=ENCODINGS[snapshot.kind],
            columns=columns,
            rows=rows,
            bytes=stored.size,
            raw_bytes=stored.raw_bytes,
            sha256=stored.sha256,
        )
        entries.append(entry)
        if progress is not None:
            await progress(entry)
    return entries


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _check_version(snapshot: Snapshot) -> None:
    if snapshot.schema_version == 0:
        raise BackupError(f"{snapshot.database} holds no event schema: nothing to back up")
    if snapshot.schema_version > latest_version():
        raise BackupError(
            f"{snapshot.database} is at event schema version {snapshot.schema_version}, newer than "
            f"this batchserve knows ({latest_version()}): back it up with a newer batchserve"
        )
