"""Database access shared by backup and restore: connections, catalogue queries, error messages.

Both open their own connection (never the server's pool) and speak to the tables of the
connection's current schema by qualified name, the schema the migrations created them in.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from batchserve.events.backup_format import TABLES, BackupError, Column
from batchserve.events.config import redact_url
from batchserve.events.store_postgres import UNAVAILABLE_ERRORS

__all__ = [
    "SqliteThread",
    "close_postgres",
    "connect_postgres",
    "pg_columns",
    "pg_failure",
    "pg_tables",
    "quote",
    "sqlite_columns",
    "sqlite_failure",
    "sqlite_tables",
]

T = TypeVar("T")
APPLICATION_NAME = "batchserve-backup"
# A role's statement or idle timeout would cut a long COPY, or the transaction while it waits for
# the bucket between two tables.
NO_TIMEOUTS = "SET LOCAL statement_timeout = 0; SET LOCAL idle_in_transaction_session_timeout = 0"


def quote(*names: str) -> str:
    """A (qualified) SQL identifier, quoted."""
    return ".".join('"' + name.replace('"', '""') + '"' for name in names)


def pg_failure(exc: BaseException, url: str, what: str) -> BackupError:
    where = f"postgres {redact_url(url)}"
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return BackupError(f"cannot reach {where} ({what}): {type(exc).__name__}: {exc}")
    return BackupError(f"{where}: {what} failed: {type(exc).__name__}: {exc}")


async def connect_postgres(url: str, timeout_s: float) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=timeout_s, server_settings={"application_name": APPLICATION_NAME})
    except (asyncpg.PostgresError, *UNAVAILABLE_ERRORS) as exc:
        raise pg_failure(exc, url, "connect") from None


async def close_postgres(con: asyncpg.Connection, timeout_s: float) -> None:
    try:
        await con.close(timeout=timeout_s)
    except (asyncpg.PostgresError, *UNAVAILABLE_ERRORS):
        con.terminate()


async def pg_tables(con: asyncpg.Connection, schema: str) -> list[str]:
    """The backed-up tables that exist in ``schema``, in foreign-key order."""
    rows = await con.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind IN ('r', 'p')",
        schema,
        list(TABLES),
    )
    found = {r[0] for r in rows}
    return [t for t in TABLES if t in found]


async def pg_columns(con: asyncpg.Connection, schema: str, table: str) -> list[tuple[Column, bool]]:
    """The table's stored columns in order, each with whether it is an identity column."""
    rows = await con.fetch(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity <> '' "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' "
        "ORDER BY a.attnum",
        schema,
        table,
    )
    return [(Column(name=r[0], type=r[1]), bool(r[2])) for r in rows]


def sqlite_failure(exc: BaseException, path: Path, what: str) -> BackupError:
    return BackupError(f"sqlite {path}: {what} failed: {exc}")


def sqlite_tables(con: sqlite3.Connection) -> list[str]:
    found = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return [t for t in TABLES if t in found]


def sqlite_columns(con: sqlite3.Connection, table: str) -> list[Column]:
    # PRAGMA table_info: (cid, name, type, notnull, default, pk)
    return [Column(name=r[1], type=r[2]) for r in con.execute(f"PRAGMA table_info({quote(table)})")]


class SqliteThread:
    """One sqlite3 connection driven from one dedicated thread (connections belong to their thread)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._con: sqlite3.Connection | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
            if self._con is None:
                raise BackupError(f"sqlite {self.path} is not open")
            return fn(self._con, *args)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except (sqlite3.Error, OSError) as exc:
            raise BackupError(f"sqlite {self.path}: {exc}") from None

    async def open(self, *, readonly: bool, busy_timeout_s: float) -> None:
        def connect() -> None:
            con = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_s)
            try:
                con.execute("PRAGMA foreign_keys=ON")
                if readonly:
                    con.execute("PRAGMA query_only=ON")
            except BaseException:
                con.close()
                raise
            self._con = con

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        except (sqlite3.Error, OSError) as exc:
            raise sqlite_failure(exc, self.path, "open") from None

    async def close(self) -> None:
        def close() -> None:
            con, self._con = self._con, None
            if con is not None:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                con.close()

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, close)
        finally:
            self._executor.shutdown(wait=False)
