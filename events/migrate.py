"""Applies the versioned SQL migrations in ``events/migrations`` and reports the schema version."""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING

from batchserve.events.errors import MigrationError

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

__all__ = [
    "Migration",
    "latest_version",
    "load_migrations",
    "migrate_postgres",
    "migrate_sqlite",
    "postgres_schema_version",
    "split_sqlite_script",
    "sqlite_schema_version",
]

log = logging.getLogger(__name__)

DIALECTS = ("postgres", "sqlite")
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(postgres|sqlite)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def load_migrations(dialect: str) -> tuple[Migration, ...]:
    """The migrations of ``dialect`` in version order; checks the two dialects stay in step."""
    if dialect not in DIALECTS:
        raise MigrationError(f"unknown dialect {dialect!r}: expected one of {', '.join(DIALECTS)}")
    by_dialect: dict[str, dict[int, Migration]] = {d: {} for d in DIALECTS}
    for entry in resources.files("batchserve.events.migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if match is None:
            continue
        version, name, file_dialect = int(match[1]), match[2], match[3]
        if version in by_dialect[file_dialect]:
            raise MigrationError(f"two {file_dialect} migrations share version {version}")
        by_dialect[file_dialect][version] = Migration(version, name, entry.read_text(encoding="utf-8"))
    pg, lite = by_dialect["postgres"], by_dialect["sqlite"]
    if {(m.version, m.name) for m in pg.values()} != {(m.version, m.name) for m in lite.values()}:
        raise MigrationError("postgres and sqlite migrations differ: every version needs both files")
    versions = sorted(by_dialect[dialect])
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"migration versions must be 1..N without gaps, found {versions}")
    return tuple(by_dialect[dialect][v] for v in versions)


def latest_version() -> int:
    return len(load_migrations("postgres"))


def _warn_if_newer(version: int) -> None:
    if version > latest_version():
        log.warning(
            "event schema is at version %d, newer than this build knows (%d); writing anyway",
            version,
            latest_version(),
        )


_PG_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def postgres_schema_version(con: asyncpg.Connection | PoolConnectionProxy) -> int:
    """Highest applied migration, 0 when the schema was never created."""
    if await con.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return 0
    return int(await con.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


async def migrate_postgres(con: asyncpg.Connection | PoolConnectionProxy, *, target: int | None = None) -> int:
    """Apply missing migrations (up to version ``target``, default all) in one transaction; returns
    the schema version.

    An advisory lock serialises replicas starting together: without it two of them could both
    see version 0 and race on CREATE TABLE.
    """
    schema = await con.fetchval("SELECT current_schema()")
    if schema is None:
        raise MigrationError("the connection's search_path names no existing schema to create the tables in")
    async with con.transaction():
        await con.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('batchserve.events.migrate:' || current_schema(), 0))"
        )
        await con.execute(_PG_BOOTSTRAP)
        applied = {r[0] for r in await con.fetch("SELECT version FROM schema_migrations")}
        for m in load_migrations("postgres"):
            if m.version in applied or (target is not None and m.version > target):
                continue
            log.info("applying event schema migration %04d_%s (postgres)", m.version, m.name)
            try:
                await con.execute(m.sql)
            except Exception as exc:  # asyncpg raises many PostgresError subclasses; keep the cause
                raise MigrationError(f"migration {m.version:04d}_{m.name} failed: {exc}") from exc
            await con.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name)
        version = await postgres_schema_version(con)
    _warn_if_newer(version)
    return version


_SQLITE_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""


def split_sqlite_script(sql: str) -> list[str]:
    """Split a script into statements (``executescript`` would commit mid-migration)."""
    statements: list[str] = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if _strip_comments(pending):
                statements.append(pending.strip())
            pending = ""
    if _strip_comments(pending):
        raise MigrationError(f"incomplete SQL statement at the end of a migration: {pending.strip()[:80]!r}")
    return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--")).strip(" \n;")


def sqlite_schema_version(con: sqlite3.Connection) -> int:
    row = con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
    if row is None:
        return 0
    return int(con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0])


def migrate_sqlite(con: sqlite3.Connection, *, target: int | None = None) -> int:
    """Apply missing migrations (up to version ``target``, default all) in one transaction (``con``
    must be in autocommit mode)."""
    if con.isolation_level is not None:
        raise MigrationError("migrate_sqlite needs a connection opened with isolation_level=None")
    # IMMEDIATE takes the write lock up front: two processes migrating the same file serialise.
    con.execute("BEGIN IMMEDIATE")
    try:
        con.execute(_SQLITE_BOOTSTRAP)
        applied = {r[0] for r in con.execute("SELECT version FROM schema_migrations")}
        for m in load_migrations("sqlite"):
            if m.version in applied or (target is not None and m.version > target):
                continue
            log.info("applying event schema migration %04d_%s (sqlite)", m.version, m.name)
            try:
                for statement in split_sqlite_script(m.sql):
                    con.execute(statement)
            except sqlite3.Error as exc:
                raise MigrationError(f"migration {m.version:04d}_{m.name} failed: {exc}") from exc
            con.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (m.version, m.name, datetime.now(UTC).isoformat()),
            )
        version = sqlite_schema_version(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    _warn_if_newer(version)
    return version
