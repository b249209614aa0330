"""Connections of their own for analytics, so a heavy statistics query never touches the writer's.

The writer's pool is sized for batch writes, and its timeouts cut its own connections; a query
scanning weeks of facts must share neither.  PostgreSQL: a small pool (``stats_max_connections``)
of read-only sessions carrying ``statement_timeout``, so the server itself cancels a runaway query
and the connection stays usable.  SQLite: one read-only connection on its own thread (in WAL mode
readers never block the writer), whose statements a progress handler aborts past their deadline.
Either way the wait for a free connection counts against the same timeout.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from batchserve.events.config import EventsConfig, redact_url
from batchserve.events.errors import SchemaMissing, StatsBusy, StatsTimeout, StoreError, StoreUnavailable
from batchserve.events.store_postgres import UNAVAILABLE_ERRORS, open_pool

__all__ = ["APPLICATION_NAME", "PostgresStatsReader", "SqliteStatsReader", "StatsReader", "open_stats_reader"]

APPLICATION_NAME = "batchserve-stats"
# Past the statement timeout, how long the client waits for the server's own cancel to arrive
# before it gives up on the answer (a server that stopped answering altogether).
_CLIENT_GRACE_S = 2.0
_RELEASE_TIMEOUT_S = 5.0
# Shutdown does not wait for statistics: a query still running then is cut, its client gets an error.
_CLOSE_TIMEOUT_S = 0.5
# SQLite calls the progress handler every this many virtual-machine instructions (microseconds).
_PROGRESS_STEPS = 1000


class StatsReader(ABC):
    """Runs read-only statistics queries, each bounded by ``statement_timeout_ms``.

    Raises ``StatsTimeout`` when a statement ran too long, ``StatsBusy`` when no connection came
    free in that time, ``StoreUnavailable`` / ``StoreError`` when the store cannot answer.
    """

    kind: ClassVar[str]

    def __init__(self, statement_timeout_ms: int) -> None:
        self.timeout_s = statement_timeout_ms / 1000

    @abstractmethod
    def describe(self) -> str:
        """Where the statistics come from, for logs and errors (no credentials)."""

    @abstractmethod
    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    async def close(self) -> None: ...

    def _timed_out(self) -> StatsTimeout:
        return StatsTimeout(f"{self.describe()}: the statistics query ran longer than {self.timeout_s * 1000:g} ms")

    def _busy(self) -> StatsBusy:
        return StatsBusy(f"{self.describe()}: every statistics connection stayed busy for {self.timeout_s * 1000:g} ms")


def open_stats_reader(config: EventsConfig) -> StatsReader:
    """The reader for the store ``config`` names; it connects on its first query."""
    if config.database_url:
        return PostgresStatsReader(
            config.database_url,
            statement_timeout_ms=config.stats_statement_timeout_ms,
            max_connections=config.stats_max_connections,
            connect_timeout_s=config.store_timeout_s,
        )
    return SqliteStatsReader(config.events_path, statement_timeout_ms=config.stats_statement_timeout_ms)


class PostgresStatsReader(StatsReader):
    kind = "postgres"

    def __init__(self, url: str, *, statement_timeout_ms: int, max_connections: int, connect_timeout_s: float) -> None:
        super().__init__(statement_timeout_ms)
        self._url = url
        self._statement_timeout_ms = statement_timeout_ms
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    def describe(self) -> str:
        return f"postgres {redact_url(self._url)}"

    async def _ensure_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await open_pool(
                    self._url,
                    min_size=1,
                    max_size=self._max_connections,
                    timeout=self._connect_timeout_s,
                    server_settings={
                        "statement_timeout": str(self._statement_timeout_ms),
                        # Analytics never writes; a read-only session makes sure of it.
                        "default_transaction_read_only": "on",
                        "application_name": APPLICATION_NAME,
                    },
                )
            return self._pool

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            pool = await self._ensure_pool()
        except (TimeoutError, *UNAVAILABLE_ERRORS) as exc:
            raise StoreUnavailable(f"{self.describe()}: cannot connect: {type(exc).__name__}: {exc}") from exc
        try:
            con = await pool.acquire(timeout=self.timeout_s)
        except TimeoutError:
            raise self._busy() from None
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"{self.describe()}: cannot connect: {type(exc).__name__}: {exc}") from exc
        try:
            rows = await con.fetch(sql, *params, timeout=self.timeout_s + _CLIENT_GRACE_S)
        except asyncpg.QueryCanceledError as exc:
            raise StatsTimeout(f"{self.describe()}: {exc}") from exc
        except TimeoutError:
            raise self._timed_out() from None
        except asyncpg.UndefinedTableError as exc:
            raise SchemaMissing(f"{self.describe()}: {exc} (run `batchserve db upgrade`)") from exc
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"{self.describe()}: query failed: {type(exc).__name__}: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"{self.describe()}: query failed: {type(exc).__name__}: {exc}") from exc
        finally:
            # Bounded: a connection whose reset does not finish in time is terminated, alone.
            await pool.release(con, timeout=_RELEASE_TIMEOUT_S)
        return [tuple(r) for r in rows]

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT_S)
        except (TimeoutError, *UNAVAILABLE_ERRORS):
            pool.terminate()


class SqliteStatsReader(StatsReader):
    kind = "sqlite"

    def __init__(
        self, path: Path | str, *, statement_timeout_ms: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(statement_timeout_ms)
        self.path = Path(path)
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events-stats-sqlite")
        self._con: sqlite3.Connection | None = None  # used on the executor's thread only
        self._turn = asyncio.Lock()  # one statement at a time on the one connection

    def describe(self) -> str:
        return f"sqlite {self.path}"

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        deadline = self._clock() + self.timeout_s
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._turn.acquire()
        except TimeoutError:
            raise self._busy() from None
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run, sql, tuple(params), deadline
            )
        finally:
            self._turn.release()

    def _run(self, sql: str, params: tuple[Any, ...], deadline: float) -> list[tuple[Any, ...]]:
        con = self._connect()
        clock = self._clock
        # Any non-zero answer aborts the statement with "interrupted".
        con.set_progress_handler(lambda: clock() >= deadline, _PROGRESS_STEPS)
        try:
            return con.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if "interrupted" in message:
                raise self._timed_out() from None
            if "no such table" in message:
                raise SchemaMissing(f"{self.describe()}: {message} (run `batchserve db upgrade`)") from exc
            raise StoreUnavailable(f"{self.describe()}: query failed: {message}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"{self.describe()}: query failed: {type(exc).__name__}: {exc}") from exc
        finally:
            con.set_progress_handler(None, 0)

    def _connect(self) -> sqlite3.Connection:
        if self._con is not None:
            return self._con
        if not self.path.exists():
            # Connecting would create an empty file; the writer creates it with its schema.
            raise SchemaMissing(f"no events database at {self.path} yet")
        try:
            con = sqlite3.connect(self.path, isolation_level=None, timeout=self.timeout_s)
            con.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self.describe()}: cannot open: {exc}") from exc
        self._con = con
        return con

    async def close(self) -> None:
        def close() -> None:
            if self._con is not None:
                self._con.close()
                self._con = None

        con = self._con
        if con is not None:
            con.interrupt()  # thread-safe: a running statement stops at once instead of at its deadline
        try:
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._executor, close), _CLOSE_TIMEOUT_S)
        except TimeoutError:
            pass  # the thread finishes on its own; nothing waits for it
        finally:
            self._executor.shutdown(wait=False)
