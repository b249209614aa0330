"""The asynchronous event writer: ``put`` on the request path, everything else in the background.

Flow: ``put`` appends to a bounded deque (O(1), never raises, never awaits).  A flusher task
wakes every ``flush_interval_ms`` — sooner once ``flush_max_events`` are waiting — and writes
the buffer to the store in batches.  When a write fails or times out the batch goes to the
journal on local disk and the store is treated as down: until a reconnection attempt (with
exponential backoff) succeeds, every tick spills the buffer to the journal; afterwards the
journal is replayed one segment per tick, idempotently (facts are unique by ``event_id``), and
replayed segments are deleted.  When the buffer is full ``put`` hands events to a spill task
that journals them at once; when the journal is full too they are dropped, counted, and logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from batchserve.events.config import EventsConfig
from batchserve.events.errors import JournalError, StoreError, StoreUnavailable
from batchserve.events.journal import Journal
from batchserve.events.model import Event
from batchserve.events.pii import apply_pii
from batchserve.events.ratelog import RateLimitedLog
from batchserve.events.store import EventStore, open_store

__all__ = ["EventWriter", "WriterStats", "open_store"]

log = logging.getLogger(__name__)

_BACKOFF_INITIAL_S = 0.25
# Part of close()'s time kept back for journaling what the store did not take in time.
_CLOSE_RESERVE_FRACTION = 0.25
_CLOSE_RESERVE_MAX_S = 1.0
_FINAL_SPILL_FLOOR_S = 0.25
_CANCEL_GRACE_S = 0.5

State = Literal["new", "running", "closing", "closed"]


@dataclass(frozen=True)
class WriterStats:
    buffered: int  # in memory: waiting for the flusher, the spill task, or in the write in progress
    written_total: int  # events committed to the store from memory
    spilled_total: int  # events written to the journal
    replayed_total: int  # journaled events committed to the store
    dropped_total: int  # events lost: buffer and journal both full, or put after close
    flush_errors_total: int  # failed store writes
    last_error: str | None
    store_kind: str  # "postgres" | "sqlite"
    healthy: bool  # the last store operation succeeded
    journal_bytes: int
    journal_segments: int


class EventWriter:
    def __init__(self, config: EventsConfig, store: EventStore | None = None) -> None:
        self.config = config
        self.store = store if store is not None else open_store(config)
        # A disabled writer touches no disk at all, so it has no journal.
        self._journal = Journal(config.journal_dir, config.journal_max_bytes) if config.enabled else None
        self._buffer: deque[Event] = deque()
        # Events that found the buffer full, waiting for the spill task; bounded like the buffer.
        self._overflow: deque[Event] = deque()
        self._inflight: list[Event] = []  # taken by the flusher, not yet stored or journaled
        self._spilling: list[Event] = []  # taken by the spill task, not yet journaled
        self._wake = asyncio.Event()
        self._overflow_ready = asyncio.Event()
        self._state: State = "new"
        self._healthy = False
        self._backoff = _BACKOFF_INITIAL_S
        self._retry_at = 0.0
        self._flusher: asyncio.Task[None] | None = None
        self._spiller: asyncio.Task[None] | None = None
        # One thread for journal I/O: appends stay ordered, and a slow fsync stalls nothing else.
        self._journal_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events-journal")
        self._written = self._spilled = self._replayed = self._dropped = self._flush_errors = 0
        self._last_error: str | None = None
        self._drop_logs: dict[str, RateLimitedLog] = {}
        self._log_unavailable = RateLimitedLog(log, logging.WARNING, interval_s=30.0)

    # -- request path ------------------------------------------------------------------------

    def put(self, event: Event) -> None:
        """Queue ``event`` for writing.  Non-blocking, never raises; call it on the event loop."""
        try:
            if not self.config.enabled:
                return
            if type(event) is not Event:
                self._drop(1, "type", f"put() takes an Event, got {type(event).__name__}")
                return
            if self._state == "closed":
                self._drop(1, "closed", "the event writer is closed")
                return
            if len(self._buffer) < self.config.buffer_size:
                self._buffer.append(event)
                if len(self._buffer) >= self.config.flush_max_events and not self._wake.is_set():
                    self._wake.set()
            elif len(self._overflow) < self.config.buffer_size:
                self._overflow.append(event)
                if not self._overflow_ready.is_set():
                    self._overflow_ready.set()
            else:
                self._drop(1, "full", "the buffer and the spill queue are full")
        except Exception:  # the request must not fail because analytics did
            log.exception("EventWriter.put failed")

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (applying migrations), replay the journal, start the background tasks.

        An unreachable database does not fail the start: events go to the journal until it is
        back.  A store that answers but refuses (failed migration, permissions) raises.
        """
        if self._state != "new":
            raise RuntimeError(f"EventWriter.start() called in state {self._state!r}")
        self._state = "running"
        if not self.config.enabled:
            self._healthy = True
            return
        self._spiller = asyncio.create_task(self._run_spiller(), name="events-spiller")
        try:
            version = await self.store.open()
        except StoreUnavailable as exc:
            self._store_failed(exc, counts_as_flush_error=False)
            log.warning("event store unavailable at start; journaling events until it is back: %s", exc)
        except BaseException:
            self._spiller.cancel()
            self._state = "closed"
            self.journal.close()
            self._journal_io.shutdown(wait=False)
            raise
        else:
            self._healthy = True
            log.info("events go to %s (schema version %d)", self.store.describe(), version)
            while self._healthy and self.journal.segment_count:
                if not await self._replay_one():
                    break
        self._flusher = asyncio.create_task(self._run_flusher(), name="events-flusher")

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is buffered (what the store does not take in time goes to the journal), stop."""
        if self._state == "closed":
            return
        if not self.config.enabled:
            self._state = "closed"
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reserve = min(_CLOSE_RESERVE_MAX_S, timeout * _CLOSE_RESERVE_FRACTION)
        self._state = "closing"
        self._wake.set()
        self._overflow_ready.set()
        for task in (self._flusher, self._spiller):
            if task is not None:
                await _finish(task, deadline - reserve - loop.time())
        # Loop: events put while the previous leftovers were being journaled are leftovers too.
        # A local append gets a short floor of time even past the deadline: it beats dropping.
        spill_deadline = max(deadline, loop.time() + _FINAL_SPILL_FLOOR_S)
        while leftovers := [
            *self._inflight,
            *self._spilling,
            *self._take_all(self._buffer),
            *self._take_all(self._overflow),
        ]:
            self._inflight, self._spilling = [], []
            if loop.time() >= spill_deadline:
                self._drop(len(leftovers), "deadline", "they arrived after the close deadline")
                continue
            try:
                await asyncio.wait_for(self._spill(leftovers), spill_deadline - loop.time())
            except TimeoutError:
                self._drop(len(leftovers), "deadline", "the journal did not take them before the close deadline")
        self._state = "closed"
        await self._io(self.journal.close)
        self._journal_io.shutdown(wait=False)
        try:
            await self.store.close()
        except StoreError as exc:
            log.warning("closing %s failed: %s", self.store.describe(), exc)

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise RuntimeError("a disabled event writer has no journal")
        return self._journal

    @property
    def stats(self) -> WriterStats:
        return WriterStats(
            buffered=len(self._buffer) + len(self._overflow) + len(self._inflight) + len(self._spilling),
            written_total=self._written,
            spilled_total=self._spilled,
            replayed_total=self._replayed,
            dropped_total=self._dropped,
            flush_errors_total=self._flush_errors,
            last_error=self._last_error,
            store_kind=self.store.kind,
            healthy=self._healthy,
            journal_bytes=self._journal.size_bytes if self._journal else 0,
            journal_segments=self._journal.segment_count if self._journal else 0,
        )

    # -- background ----------------------------------------------------------------------------

    async def _run_flusher(self) -> None:
        interval = self.config.flush_interval_ms / 1000
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            final = self._state == "closing"
            try:
                await self._flush_once(final=final)
            except Exception:  # a bug here must not stop the flusher for good
                log.exception("event flush failed unexpectedly")
            if final:
                return

    async def _flush_once(self, *, final: bool) -> None:
        if not self._healthy and not final and time.monotonic() >= self._retry_at:
            await self._reconnect()
        if self._healthy and not final and self.journal.segment_count:
            await self._replay_one()
        while self._buffer and self._healthy:
            await self._write_or_spill(self._take(self._buffer, self.config.flush_max_events))
        if not self._healthy and self._buffer:
            # Down: move everything to disk now, so a crash loses at most one interval.
            await self._spill_inflight(self._take(self._buffer, len(self._buffer)))

    async def _run_spiller(self) -> None:
        while True:
            await self._overflow_ready.wait()
            self._overflow_ready.clear()
            while self._overflow:
                self._spilling = self._take(self._overflow, self.config.flush_max_events)
                await self._spill(self._spilling)
                self._spilling = []
            if self._state == "closing":
                return

    # ``_inflight`` holds a batch between leaving the buffer and landing somewhere durable.  It is
    # cleared only on the way out of a completed write or spill, not when cancelled: close()
    # journals whatever a cancelled flusher or spill task still held.

    async def _write_or_spill(self, batch: list[Event]) -> None:
        self._inflight = batch
        protected = await asyncio.to_thread(self._protect, batch)
        try:
            await self.store.write(protected)
        except StoreError as exc:
            self._store_failed(exc)
            await self._spill(protected)
        else:
            self._written += len(batch)
            self._healthy = True
        self._inflight = []

    async def _spill_inflight(self, batch: list[Event]) -> None:
        self._inflight = batch
        await self._spill(batch)
        self._inflight = []

    async def _spill(self, batch: list[Event]) -> None:
        try:
            accepted = await self._io(self._append, batch)
        except JournalError as exc:
            self._last_error = str(exc)
            accepted = 0
        except Exception as exc:  # a bug must still end up counted, never as an exception in close()
            log.exception("journaling %d events failed", len(batch))
            self._last_error = f"{type(exc).__name__}: {exc}"
            accepted = 0
        self._spilled += accepted
        if accepted < len(batch):
            self._drop(
                len(batch) - accepted,
                "journal",
                f"the journal in {self.journal.directory} is full "
                f"({self.journal.size_bytes} of {self.journal.max_bytes} bytes) or failing",
            )

    async def _reconnect(self) -> None:
        try:
            if self.store.is_open:
                await self.store.ping()
            else:
                await self.store.open()
        except StoreError as exc:
            self._store_failed(exc, counts_as_flush_error=False)
            return
        self._healthy = True
        self._backoff = _BACKOFF_INITIAL_S
        log.info("event store %s is reachable again", self.store.describe())

    async def _replay_one(self) -> bool:
        """Replay the oldest journal segment; False when the store failed meanwhile."""
        segments = await self._io(self.journal.sealed_segments)
        if not segments:
            return True
        contents = await self._io(self.journal.read, segments[0])
        # Again: the policy may be stricter now than when the events were journaled.
        events = await asyncio.to_thread(self._protect, contents.events)
        step = self.config.flush_max_events
        for i in range(0, len(events), step):
            try:
                await self.store.write(events[i : i + step])
            except StoreError as exc:
                self._store_failed(exc)
                return False
        await self._io(self.journal.remove, segments[0])
        self._replayed += len(events)
        log.info("replayed %d events from journal segment %s", len(events), segments[0].name)
        return True

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _take(queue: deque[Event], n: int) -> list[Event]:
        popleft = queue.popleft
        return [popleft() for _ in range(min(n, len(queue)))]

    def _protect(self, events: list[Event]) -> list[Event]:
        """``events`` under the PII policy; every path to the store or the journal goes through it.

        Runs in a worker thread (address parsing is not free), never on the event loop.
        """
        mode = self.config.pii
        return [apply_pii(e, mode) for e in events]

    def _append(self, events: list[Event]) -> int:
        return self.journal.append(self._protect(events))

    def _take_all(self, queue: deque[Event]) -> list[Event]:
        return self._take(queue, len(queue))

    def _store_failed(self, exc: StoreError, *, counts_as_flush_error: bool = True) -> None:
        self._healthy = False
        self._last_error = str(exc)
        if counts_as_flush_error:
            self._flush_errors += 1
        self._retry_at = time.monotonic() + self._backoff * random.uniform(0.8, 1.2)
        self._backoff = min(self._backoff * 2, self.config.reconnect_max_s)
        if isinstance(exc, StoreUnavailable):
            self._log_unavailable("event store unavailable, journaling events: %s", exc)
        else:
            log.error("event store rejected a write, journaling events: %s", exc, exc_info=exc)

    def _drop(self, n: int, kind: str, reason: str) -> None:
        """Count and log lost events; each kind of loss is rate-limited on its own."""
        self._dropped += n
        ratelog = self._drop_logs.get(kind)
        if ratelog is None:
            ratelog = self._drop_logs[kind] = RateLimitedLog(log, logging.ERROR)
        ratelog("dropped %d events: %s (%d dropped in total)", n, reason, self._dropped)

    async def _io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._journal_io, fn, *args)


async def _finish(task: asyncio.Task[None], timeout: float) -> None:
    """Let ``task`` finish within ``timeout``, else cancel it and give it a moment to unwind.

    Its awaits (store operations, journal I/O in a thread) all give way to a cancel at once,
    but close() must return in any case, so the unwinding is bounded too.
    """
    try:
        await asyncio.wait_for(asyncio.shield(task), max(0.0, timeout))
        return
    except TimeoutError:
        task.cancel()
    except Exception:
        log.exception("event writer task failed")
        return
    done, _ = await asyncio.wait({task}, timeout=_CANCEL_GRACE_S)
    if not done:
        log.error("event writer task %s did not stop when cancelled; abandoning it", task.get_name())
