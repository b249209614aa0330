"""The keys the server accepts: a snapshot of the key table held in memory.

A request looks its key up in a dict: no database round trip on the request path, and a flood of
made-up keys costs the database nothing. The snapshot is reloaded every `refresh_s` (so a
revoked key stops working within that time) and when a key it does not know is presented,
though never more than once per `min_reload_s` whatever the traffic: a key created a moment ago
works at once, while random keys cannot hammer the database. When the database is away the last
snapshot stays in force (and the failure is logged, bounded, and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from batchserve.events.errors import SchemaMissing, StoreError
from batchserve.events.keys import KeyStore, StoredKey
from batchserve.events.ratelog import RateLimitedLog
from batchserve.server.auth.keys import BOOTSTRAP_NAME, SCOPES, Identity, key_digest

log = logging.getLogger("batchserve.auth")


@dataclass
class DirectoryStats:
    keys: int = 0
    loads_total: int = 0
    load_errors_total: int = 0
    last_loaded: float | None = None  # monotonic time of the last successful load


def identity_of(key: StoredKey) -> Identity:
    return Identity(key.name, frozenset(key.scopes), key.rate_per_s, key.burst, key.expires_at)


class KeyDirectory:
    def __init__(
        self, store: KeyStore | None, admin_key: str | None, *, refresh_s: float = 5.0, min_reload_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.min_reload_s = min_reload_s
        self.clock = clock
        self.stats = DirectoryStats()
        self._bootstrap = (key_digest(admin_key), Identity(BOOTSTRAP_NAME, frozenset(SCOPES))) if admin_key else None
        self._keys: dict[str, Identity] = {}
        self._opened = False
        # Whether the key table was read once: until then an unknown key may well be valid.
        self.loaded = store is None
        self._last_started = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._task_started = -math.inf
        self._refresher: asyncio.Task[None] | None = None
        self._warn = RateLimitedLog(log, logging.WARNING, interval_s=30.0)

    def find(self, digest: str) -> Identity | None:
        """The key's identity in the current snapshot (the bootstrap admin key included)."""
        if self._bootstrap is not None and hmac.compare_digest(digest, self._bootstrap[0]):
            return self._bootstrap[1]
        return self._keys.get(digest)

    async def find_fresh(self, digest: str, since: float) -> Identity | None:
        """As `find`, from a snapshot read after `since` (a monotonic time), when the store allows."""
        found = self.find(digest)
        if found is not None or self.store is None:
            return found
        await self.reload_since(since, until=lambda: self.find(digest) is not None)
        return self.find(digest)

    async def reload_since(self, since: float, until: Callable[[], bool] = lambda: False) -> None:
        """Returns once a load that started at or after `since` has finished, successfully or not
        (or as soon as `until()` holds after a load). Concurrent callers share one load; loads
        start at most once per `min_reload_s`."""
        while True:
            task = self._task
            if task is not None:
                started = self._task_started
                await asyncio.shield(task)
                if started >= since or until():
                    return
                continue
            if self._last_started >= since:
                return
            wait = self._last_started + self.min_reload_s - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._start_load()

    def _start_load(self) -> None:
        self._last_started = self._task_started = self.clock()
        self._task = asyncio.create_task(self._load(), name="batchserve-keys-load")
        self._task.add_done_callback(self._load_done)

    def _load_done(self, task: asyncio.Task[None]) -> None:
        if self._task is task:
            self._task = None

    async def _load(self) -> None:
        store = self.store
        if store is None:
            return
        self.stats.loads_total += 1
        try:
            if not self._opened:
                await store.open(migrate=False)
                self._opened = True
            rows = await store.list_keys(include_revoked=False)
        except SchemaMissing:
            # No key has ever been created in this database: `batchserve keys create` makes the table.
            self._opened = False
            rows = []
        except StoreError as exc:
            self._opened = False
            self.stats.load_errors_total += 1
            self._warn("cannot read API keys: %s; the %d key(s) read before stay in force", exc, len(self._keys))
            return
        except Exception:
            self.stats.load_errors_total += 1
            log.exception("reading API keys failed")
            return
        self._keys = {row.key_sha256: identity_of(row) for row in rows}
        self.stats.keys = len(self._keys)
        self.stats.last_loaded = self.clock()
        if not self.loaded:
            log.info("%d API key(s) in %s", len(self._keys), store.describe())
        self.loaded = True

    def start(self) -> None:
        """The first load and the periodic reloads, in the background: a database that is slow to
        answer delays no start-up (requests with keys wait for the first load, bounded)."""
        if self.store is None:
            return
        self._start_load()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="batchserve-keys-refresh")

    async def _refresh_forever(self) -> None:
        while True:  # reload_since never raises: a failed load is logged and counted by _load
            await asyncio.sleep(self.refresh_s)
            await self.reload_since(self.clock())

    async def close(self) -> None:
        for task in (self._refresher, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresher = self._task = None
        if self.store is not None:
            await self.store.close()
