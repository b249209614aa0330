"""API keys kept in the event store's database (table ``api_keys``, migration 0002).

Only the SHA-256 of a key is stored, with its name, scopes, rate limit and validity. The
``batchserve keys`` commands add, list and revoke keys; the server reads the table of keys now and
then (a few rows). Each opens its own connection: never the event writer's, so neither can slow
the other down.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from abc import abstractmethod
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from batchserve.events.bounded import BoundedCalls
from batchserve.events.config import EventsConfig, redact_url
from batchserve.events.errors import SchemaMissing, StoreError, StoreUnavailable
from batchserve.events.migrate import migrate_postgres, migrate_sqlite
from batchserve.events.store_sqlite import format_ts, parse_ts

__all__ = ["KeyNameTaken", "KeyStore", "StoredKey", "open_key_store"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_COLUMNS = "name, key_sha256, scopes, rate_per_s, burst, created_at, expires_at, revoked_at"


class KeyNameTaken(StoreError):
    """A key of that name exists (revoked keys keep their names)."""


@dataclass(frozen=True)
class StoredKey:
    name: str
    key_sha256: str  # hex digest of the key
    scopes: tuple[str, ...]
    rate_per_s: float | None  # None: no rate limit
    burst: int | None
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def is_active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class KeyStore(BoundedCalls):
    """Every operation is bounded by ``timeout_s``: ``StoreUnavailable`` when the database does not
    answer in time, ``SchemaMissing`` when it holds no key table yet, ``StoreError`` otherwise."""

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    async def open(self, *, migrate: bool) -> None:
        """Connect; with ``migrate`` apply pending schema migrations (the key table among them)."""
        await self._bounded("open", self._open(migrate), self.timeout_s * 2)

    async def close(self) -> None:
        await self._close()

    async def add(self, key: StoredKey) -> None:
        await self._bounded("add key", self._add(key), self.timeout_s)

    async def list_keys(self, *, include_revoked: bool = True) -> list[StoredKey]:
        """Keys by name (expired ones included: whether a key is valid depends on the reader's clock)."""
        return await self._bounded("list keys", self._list(include_revoked), self.timeout_s)

    async def revoke(self, name: str, at: datetime) -> bool:
        """False when no unrevoked key has that name."""
        return await self._bounded("revoke key", self._revoke(name, at), self.timeout_s)

    @abstractmethod
    async def _open(self, migrate: bool) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _add(self, key: StoredKey) -> None: ...

    @abstractmethod
    async def _list(self, include_revoked: bool) -> list[StoredKey]: ...

    @abstractmethod
    async def _revoke(self, name: str, at: datetime) -> bool: ...


def _scopes(text: str) -> tuple[str, ...]:
    return tuple(s for s in text.split(",") if s)


class PostgresKeyStore(KeyStore):
    """One asyncpg connection, opened again after any failure."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        super().__init__(timeout_s=timeout_s)
        self._url = url
        self._con: Any = None  # asyncpg.Connection; imported lazily (the SQLite path needs no asyncpg)
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        return f"postgres {redact_url(self._url)}"

    async def _connection(self) -> Any:
        import asyncpg

        if self._con is None or self._con.is_closed():
            self._con = await asyncpg.connect(self._url, timeout=self.timeout_s)
        return self._con

    async def _run(self, fn: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        async with self._lock:
            con = await self._connection()
            try:
                return await fn(con)
            except Exception:
                # The next call starts from a fresh connection rather than a broken one.
                self._reset_connections()
                raise

    def _reset_connections(self) -> None:
        con, self._con = self._con, None
        if con is not None and not con.is_closed():
            con.terminate()

    async def _open(self, migrate: bool) -> None:
        async def run(con: Any) -> None:
            if migrate:
                await migrate_postgres(con)
            elif await con.fetchval("SELECT to_regclass('api_keys')") is None:
                raise SchemaMissing(f"{self.describe()} holds no key table: run `batchserve db upgrade`")

        await self._run(run)

    async def _close(self) -> None:
        con, self._con = self._con, None
        if con is not None and not con.is_closed():
            try:
                await asyncio.wait_for(con.close(), self.timeout_s)
            except Exception:  # noqa: BLE001 - a close that fails leaves nothing to clean but the socket
                con.terminate()

    async def _add(self, key: StoredKey) -> None:
        await self._run(lambda con: con.execute(
            f"INSERT INTO api_keys ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            key.name, key.key_sha256, ",".join(key.scopes), key.rate_per_s, key.burst, key.created_at,
            key.expires_at, key.revoked_at,
        ))

    async def _list(self, include_revoked: bool) -> list[StoredKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self._run(lambda con: con.fetch(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY name"))
        return [StoredKey(r[0], r[1], _scopes(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in rows]

    async def _revoke(self, name: str, at: datetime) -> bool:
        status = await self._run(lambda con: con.execute(
            "UPDATE api_keys SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL", name, at))
        return str(status).endswith(" 1")

    def _translate(self, exc: Exception, what: str) -> StoreError:
        import asyncpg

        if isinstance(exc, asyncpg.UniqueViolationError):
            return KeyNameTaken(f"a key with that name exists already in {self.describe()}")
        if isinstance(exc, asyncpg.UndefinedTableError):
            return SchemaMissing(f"{self.describe()} holds no key table: run `batchserve db upgrade`")
        if isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                            asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)):
            return StoreUnavailable(f"{self.describe()}: {what} failed: {type(exc).__name__}: {exc}")
        return StoreError(f"{self.describe()}: {what} failed: {type(exc).__name__}: {exc}")


class SqliteKeyStore(KeyStore):
    """One sqlite3 connection living on its own thread (sqlite3 connections belong to one thread)."""

    def __init__(self, path: Path | str, *, timeout_s: float = 5.0) -> None:
        super().__init__(timeout_s=timeout_s)
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._con: sqlite3.Connection | None = None

    def describe(self) -> str:
        return f"sqlite {self.path}"

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            raise StoreUnavailable(f"{self.describe()} is not open")

        def call() -> T:
            if self._con is None:
                raise StoreUnavailable(f"{self.describe()} is not open")
            return fn(self._con)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _reset_connections(self) -> None:
        """Nothing to cut: a busy SQLite call ends by itself within its busy timeout."""

    async def _open(self, migrate: bool) -> None:
        if not migrate and not self.path.exists():
            # Reading must not create an empty database where the events file is expected.
            raise SchemaMissing(f"no database at {self.path} yet: `batchserve keys create` makes one")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keys-sqlite")
        busy_ms = int(self.timeout_s * 1000)

        def connect() -> None:
            if self._con is None:
                if migrate:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                con = sqlite3.connect(self.path, isolation_level=None, timeout=busy_ms / 1000)
                con.execute(f"PRAGMA busy_timeout={busy_ms}")
                self._con = con
            if migrate:
                migrate_sqlite(self._con)
            elif self._con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'api_keys'"
            ).fetchone() is None:
                raise SchemaMissing(f"{self.path} holds no key table: run `batchserve db upgrade`")

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)

    async def _close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def close() -> None:
            if self._con is not None:
                self._con.close()
                self._con = None

        try:
            await asyncio.get_running_loop().run_in_executor(executor, close)
        finally:
            executor.shutdown(wait=False)

    async def _add(self, key: StoredKey) -> None:
        def add(con: sqlite3.Connection) -> None:
            con.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key.name, key.key_sha256, ",".join(key.scopes), key.rate_per_s, key.burst, format_ts(key.created_at),
                 _text(key.expires_at), _text(key.revoked_at)),
            )

        await self._call(add)

    async def _list(self, include_revoked: bool) -> list[StoredKey]:
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = await self._call(lambda con: con.execute(f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY name")
                                .fetchall())
        return [StoredKey(r[0], r[1], _scopes(r[2]), r[3], r[4], parse_ts(r[5]), _time(r[6]), _time(r[7]))
                for r in rows]

    async def _revoke(self, name: str, at: datetime) -> bool:
        cursor = await self._call(lambda con: con.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (format_ts(at), name)))
        return cursor.rowcount == 1

    def _translate(self, exc: Exception, what: str) -> StoreError:
        message = str(exc)
        if isinstance(exc, sqlite3.IntegrityError) and "api_keys.name" in message:
            return KeyNameTaken(f"a key with that name exists already in {self.describe()}")
        if isinstance(exc, sqlite3.OperationalError) and "no such table" in message:
            return SchemaMissing(f"{self.describe()} holds no key table: run `batchserve db upgrade`")
        if isinstance(exc, (sqlite3.OperationalError, OSError)):
            return StoreUnavailable(f"{self.describe()}: {what} failed: {message}")
        return StoreError(f"{self.describe()}: {what} failed: {type(exc).__name__}: {message}")


def _text(ts: datetime | None) -> str | None:
    return None if ts is None else format_ts(ts)


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_ts(text)


def open_key_store(config: EventsConfig, *, timeout_s: float | None = None) -> KeyStore:
    """The key store of the database ``config`` names (not yet opened)."""
    timeout = config.store_timeout_s if timeout_s is None else timeout_s
    if config.database_url:
        return PostgresKeyStore(config.database_url, timeout_s=timeout)
    return SqliteKeyStore(config.events_path, timeout_s=timeout)
