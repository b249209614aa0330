"""`batchserve db restore`: a backup written by `batchserve db backup` loaded into an empty event store.

The backup is the folder named by ``--from``, or the latest complete one (a manifest present)
under it. Each object is downloaded to a temporary file while its sha256 is computed, checked
against the manifest before a byte of it reaches the database, then decompressed into the table;
every table's row count is checked after loading.

PostgreSQL: one transaction does it all — migrate to the backup's schema version, lock the tables,
refuse rows already there, COPY each table in foreign-key order, move the identity sequences past
the restored keys, migrate to this build's latest version — so a failed restore leaves the
database as it was. SQLite: the migration to the backup's version commits on its own; the load
and the checks run in one transaction after it, so a failure leaves the schema without rows
(AUTOINCREMENT's counters follow the restored keys by themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import asyncpg

from batchserve.events.backup_bucket import BackupBucket
from batchserve.events.backup_db import (
    NO_TIMEOUTS,
    SqliteThread,
    close_postgres,
    connect_postgres,
    pg_columns,
    pg_failure,
    pg_tables,
    quote,
    sqlite_columns,
    sqlite_tables,
)
from batchserve.events.backup_format import (
    BACKUP_ID_RE,
    MANIFEST,
    BackupError,
    Column,
    Manifest,
    TableEntry,
    decode_manifest,
    gunzip,
    iter_frames,
)
from batchserve.events.config import EventsConfig, redact_url
from batchserve.events.migrate import (
    latest_version,
    migrate_postgres,
    migrate_sqlite,
    postgres_schema_version,
    sqlite_schema_version,
)
from batchserve.events.store_postgres import UNAVAILABLE_ERRORS
from batchserve.model_repo.location import ObjectStoreLocation

__all__ = ["RestoreOptions", "TargetNotEmpty", "find_backup", "run_restore"]

_READ_CHUNK = 1 << 20
Progress = Callable[[TableEntry], Awaitable[None]]
# Yields a table's object, downloaded and checked against the manifest, positioned at its start.
Fetch = Callable[[TableEntry], contextlib.AbstractAsyncContextManager[IO[bytes]]]


class TargetNotEmpty(BackupError):
    """The database to restore into already holds rows."""


@dataclass(frozen=True)
class RestoreOptions:
    endpoint_url: str | None = None
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class Restored:
    url: str
    manifest: Manifest
    database: str
    schema_version: int  # after the restore (this build's latest)


def find_backup(bucket: BackupBucket) -> str:
    """The backup folder (relative to the location) that ``--from`` means; BackupError if none. Blocks."""
    keys = bucket.list_keys()
    if MANIFEST in keys:
        return ""
    complete = sorted(
        k.split("/")[0]
        for k in keys
        if k.count("/") == 1 and k.endswith(f"/{MANIFEST}") and BACKUP_ID_RE.match(k.split("/")[0])
    )
    if complete:
        return complete[-1]
    where = bucket.url()
    if BACKUP_ID_RE.match(bucket.location.prefix.rsplit("/", 1)[-1]) and keys:
        raise BackupError(
            f"the backup at {where} is incomplete: it has no {MANIFEST} (the backup was interrupted "
            "or is still being written)"
        )
    started = sorted({k.split("/")[0] for k in keys if BACKUP_ID_RE.match(k.split("/")[0])})
    if started:
        raise BackupError(
            f"no complete backup under {where}: {len(started)} incomplete one(s) without a "
            f"{MANIFEST} ({', '.join(started[-3:])})"
        )
    raise BackupError(
        f"no backup at {where}: give s3://BUCKET/PREFIX/<backup id> or the PREFIX that "
        "`batchserve db backup --to` was given"
    )


async def run_restore(
    config: EventsConfig,
    source: ObjectStoreLocation,
    options: RestoreOptions | None = None,
    progress: Progress | None = None,
) -> Restored:
    """Restore the backup ``source`` names into the empty store ``config`` names."""
    options = options or RestoreOptions()
    bucket = await asyncio.to_thread(BackupBucket, source, options.endpoint_url)
    folder = await asyncio.to_thread(find_backup, bucket)
    manifest_key = f"{folder}/{MANIFEST}" if folder else MANIFEST
    raw = io.BytesIO()
    await asyncio.to_thread(bucket.get, manifest_key, raw)
    manifest = decode_manifest(raw.getvalue(), bucket.url(manifest_key))
    if manifest.schema_version > latest_version():
        raise BackupError(
            f"the backup is at event schema version {manifest.schema_version}, newer than this "
            f"batchserve knows ({latest_version()}): restore it with a newer batchserve"
        )
    target_kind = "postgres" if config.database_url else "sqlite"
    if manifest.source.kind != target_kind:
        flag = "--database-url postgresql://..." if manifest.source.kind == "postgres" else "--events-path FILE"
        raise BackupError(
            f"the backup was taken from {manifest.source.kind} and restores into {manifest.source.kind} "
            f"only ({flag}); the target is {target_kind}"
        )

    @contextlib.asynccontextmanager
    async def fetch(entry: TableEntry) -> AsyncIterator[IO[bytes]]:
        relative = f"{folder}/{entry.object}" if folder else entry.object
        spool: IO[bytes] = await asyncio.to_thread(tempfile.TemporaryFile, prefix="batchserve-restore-")
        try:
            size, sha256 = await asyncio.to_thread(bucket.get, relative, spool)
            if sha256 != entry.sha256 or size != entry.bytes:
                raise BackupError(
                    f"{bucket.url(relative)} does not match the manifest (sha256 {sha256}, "
                    f"{size} bytes; expected {entry.sha256}, {entry.bytes} bytes): the object is "
                    "corrupt or was changed after the backup"
                )
            spool.seek(0)
            yield spool
        finally:
            spool.close()

    def where(entry: TableEntry) -> str:
        return bucket.url(f"{folder}/{entry.object}" if folder else entry.object)

    if config.database_url:
        database = f"postgres {redact_url(config.database_url)}"
        version = await restore_postgres(
            config.database_url, manifest, fetch, where, options.connect_timeout_s, progress
        )
    else:
        database = f"sqlite {config.events_path}"
        version = await restore_sqlite(config.events_path, manifest, fetch, where, options.connect_timeout_s, progress)
    return Restored(bucket.url(folder), manifest, database, version)


def _check_columns(entry: TableEntry, target: list[Column], *, types: bool) -> None:
    """The target table must take every column of the backup (with the same type in Postgres, whose
    binary COPY format depends on it); columns added by later migrations get their defaults."""
    have = {c.name: c.type for c in target}
    missing = [c.name for c in entry.columns if c.name not in have]
    if missing:
        raise BackupError(f"table {entry.name} of the target has no column {', '.join(missing)} of the backup")
    if types:
        changed = [
            f"{c.name} ({c.type} in the backup, {have[c.name]} here)" for c in entry.columns if have[c.name] != c.type
        ]
        if changed:
            raise BackupError(f"table {entry.name} of the target has other column types: {', '.join(changed)}")


def _not_empty(database: str, tables: list[str]) -> TargetNotEmpty:
    return TargetNotEmpty(
        f"{database} is not empty ({', '.join(tables)} hold rows): restore into an empty "
        "database, e.g. a new one, so no event or key is mixed with the backup's"
    )


def _check_count(entry: TableEntry, loaded: int, where: str) -> None:
    if loaded != entry.rows:
        raise BackupError(f"{where} held {loaded} rows of {entry.name}; the manifest says {entry.rows}")


async def restore_postgres(
    url: str,
    manifest: Manifest,
    fetch: Fetch,
    where: Callable[[TableEntry], str],
    timeout_s: float,
    progress: Progress | None,
) -> int:
    con = await connect_postgres(url, timeout_s)
    database = f"postgres {redact_url(url)}"
    step = "restore"
    try:
        async with con.transaction():
            await con.execute(NO_TIMEOUTS)
            schema = await con.fetchval("SELECT current_schema()")
            if schema is None:
                raise BackupError(f"{database}: the search_path names no existing schema")
            if await postgres_schema_version(con) > latest_version():
                raise BackupError(f"{database} is at an event schema version newer than this batchserve knows")
            step = f"migrating to event schema version {manifest.schema_version}"
            await migrate_postgres(con, target=manifest.schema_version)
            step = "locking the tables"
            tables = await pg_tables(con, schema)
            # No writer may add rows between the check below and the commit.
            await con.execute(f"LOCK TABLE {', '.join(quote(schema, t) for t in tables)} IN EXCLUSIVE MODE")
            full = [t for t in tables if await con.fetchval(f"SELECT EXISTS (SELECT 1 FROM {quote(schema, t)})")]
            if full:
                raise _not_empty(database, full)
            for entry in manifest.tables:
                step = f"loading {entry.name}"
                columns = await pg_columns(con, schema, entry.name)
                _check_columns(entry, [c for c, _identity in columns], types=True)
                async with fetch(entry) as spool:
                    status = await con.copy_to_table(
                        entry.name,
                        schema_name=schema,
                        format="binary",
                        columns=[c.name for c in entry.columns],
                        source=_decompressed(spool, where(entry)),
                    )
                _check_count(entry, int(status.rsplit(" ", 1)[-1]), where(entry))
                for column, identity in columns:
                    if identity:
                        await _move_identity(con, schema, entry.name, column.name)
                if progress is not None:
                    await progress(entry)
            step = "migrating to the latest event schema"
            return await migrate_postgres(con)
    except (asyncpg.PostgresError, *UNAVAILABLE_ERRORS) as exc:
        raise pg_failure(exc, url, step) from None
    finally:
        await close_postgres(con, timeout_s)


async def _move_identity(con: asyncpg.Connection, schema: str, table: str, column: str) -> None:
    """The next generated key follows the largest restored one."""
    await con.execute(
        f"SELECT setval(pg_get_serial_sequence($1, $2), coalesce((SELECT max({quote(column)}) "
        f"FROM {quote(schema, table)}), 0) + 1, false)",
        quote(schema, table),
        column,
    )


async def _decompressed(spool: IO[bytes], where: str) -> AsyncIterator[bytes]:
    chunks = gunzip(iter(lambda: spool.read(_READ_CHUNK), b""), where)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


async def restore_sqlite(
    path: Path,
    manifest: Manifest,
    fetch: Fetch,
    where: Callable[[TableEntry], str],
    timeout_s: float,
    progress: Progress | None,
) -> int:
    database = f"sqlite {path}"
    try:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"{database}: cannot create its folder: {exc}") from None
    thread = SqliteThread(path, "events-restore-sqlite")
    try:
        await thread.open(readonly=False, busy_timeout_s=timeout_s)

        def prepare(con: sqlite3.Connection) -> None:
            con.execute("PRAGMA journal_mode=WAL")  # as the store runs it
            if sqlite_schema_version(con) > latest_version():
                raise BackupError(f"{database} is at an event schema version newer than this batchserve knows")
            _refuse_rows(con, database)
            migrate_sqlite(con, target=manifest.schema_version)
            # IMMEDIATE: the write lock from here to the commit, so no writer slips rows in.
            con.execute("BEGIN IMMEDIATE")
            _refuse_rows(con, database)

        await thread.run(prepare)
        for entry in manifest.tables:
            async with fetch(entry) as spool:
                loaded = await thread.run(_load_sqlite_table, entry, spool, where(entry))
            _check_count(entry, loaded, where(entry))
            if progress is not None:
                await progress(entry)
        await thread.run(lambda con: con.execute("COMMIT"))
        return await thread.run(migrate_sqlite)
    finally:
        await thread.close()  # rolls back what was not committed


def _refuse_rows(con: sqlite3.Connection, database: str) -> None:
    full = [t for t in sqlite_tables(con) if con.execute(f"SELECT EXISTS (SELECT 1 FROM {quote(t)})").fetchone()[0]]
    if full:
        raise _not_empty(database, full)


def _load_sqlite_table(con: sqlite3.Connection, entry: TableEntry, spool: IO[bytes], where: str) -> int:
    _check_columns(entry, sqlite_columns(con, entry.name), types=False)
    names = [c.name for c in entry.columns]
    sql = (
        f"INSERT INTO {quote(entry.name)} ({', '.join(quote(n) for n in names)}) VALUES ({', '.join('?' * len(names))})"
    )
    loaded = 0
    for rows in iter_frames(gunzip(iter(lambda: spool.read(_READ_CHUNK), b""), where), where):
        if any(len(row) != len(names) for row in rows):
            raise BackupError(f"{where} holds rows without {len(names)} values")
        try:
            con.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise BackupError(f"loading {entry.name} from {where} failed: {exc}") from None
        loaded += len(rows)
    return loaded
