"""The asynchronous event writer: ``put`` on the request path, everything else in the background.

Flow: ``put`` appends to a bounded deque (O(1), never raises, never awaits).  A flusher task
wakes every ``flush_interval_ms`` — sooner once ``flush_max_events`` are waiting — and writes
the buffer to the store in batches.  When a write fails or times out the batch goes to the
journal on local disk and the store is treated as down: until a reconnection attempt (with
exponential backoff) succeeds, every tick spills the buffer to the journal.  While the store is
up, each tick also replays the journal for up to one interval, a chunk at a time, oldest segment
first, idempotently (facts are unique by ``event_id``), deleting each segment once replayed —
so a large journal left by an earlier process never delays the start.  When the buffer is full
``put`` hands events to a spill task that journals them at once.

A batch the store refuses for its content (``StoreRejected``), or whose preparation raises, is
halved until the events to blame stand alone; they go to the dead-letter directory with the
reason and the rest are stored.  Every event that is not stored is counted by reason
(``LossLedger``) and logged; see docs/events.md for the accounting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from batchserve.events.config import EventsConfig
from batchserve.events.dead_letter import DeadLetter, DeadRecord
from batchserve.events.errors import JournalError, StoreError, StoreRejected, StoreUnavailable
from batchserve.events.journal import BadLine, Journal
from batchserve.events.losses import LossLedger, LossReason
from batchserve.events.model import Event
from batchserve.events.pii import apply_pii, scrub_line
from batchserve.events.ratelog import RateLimitedLog
from batchserve.events.store import EventStore, open_store

__all__ = ["EventWriter", "WriterStats", "open_store"]

log = logging.getLogger(__name__)

_warn_pii = RateLimitedLog(log, logging.WARNING)

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
    dropped_total: int  # events lost with no copy kept anywhere
    flush_errors_total: int  # store writes that failed for a reason that may pass (the events were journaled)
    last_error: str | None
    store_kind: str  # "postgres" | "sqlite"
    healthy: bool  # the last store operation succeeded
    journal_bytes: int
    journal_segments: int
    lost: Mapping[str, int]  # every event not stored, by reason (losses.py)
    lost_total: int
    dead_lettered_total: int  # of the lost events, those kept in the dead-letter directory
    dead_letter_bytes: int
    replay_pending: int  # events of the journal segment being replayed, not yet written


@dataclass
class _Replay:
    """The journal segment being replayed: its events, how many are settled, its unreadable lines."""

    path: Path
    events: list[Event]
    bad_lines: list[BadLine]
    done: int = 0


@dataclass
class _Outcome:
    """What became of events handed to the store: ``stored`` committed; those it refused were set
    aside; ``remaining`` (a suffix of the input) was not tried because ``error`` may pass."""

    stored: int = 0
    remaining: list[Event] = field(default_factory=list)
    error: StoreError | None = None


class EventWriter:
    def __init__(self, config: EventsConfig, store: EventStore | None = None) -> None:
        self.config = config
        self.store = store if store is not None else open_store(config)
        # A disabled writer touches no disk at all, so it has no journal.
        self._journal = Journal(config.journal_dir, config.journal_max_bytes) if config.enabled else None
        # After the journal: its lock covers the dead-letter directory inside it.
        self._dead_letter = DeadLetter(config.journal_dir, config.dead_letter_max_bytes) if config.enabled else None
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
        self._written = self._spilled = self._replayed = self._flush_errors = 0
        self._last_error: str | None = None
        self._losses = LossLedger(log)
        self._replay: _Replay | None = None
        self._log_unavailable = RateLimitedLog(log, logging.WARNING, interval_s=30.0)
        self._log_unprocessable = RateLimitedLog(log, logging.ERROR)
        self._log_unreadable = RateLimitedLog(log, logging.ERROR, interval_s=30.0)

    # -- request path ------------------------------------------------------------------------

    def put(self, event: Event) -> None:
        """Queue ``event`` for writing.  Non-blocking, never raises; call it on the event loop."""
        try:
            if not self.config.enabled:
                return
            if type(event) is not Event:
                self._lose("invalid", 1, f"put() takes an Event, got {type(event).__name__}")
                return
            if self._state == "closed":
                self._lose("after_close", 1, "the event writer is closed")
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
                self._lose("overflow", 1, "the buffer and the spill queue are full")
        except Exception:  # the request must not fail because analytics did
            log.exception("EventWriter.put failed")

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (applying migrations) and start the background tasks.

        An unreachable database does not fail the start: events go to the journal until it is
        back.  A store that answers but refuses (failed migration, permissions) raises.  What an
        earlier process left in the journal is replayed by the flusher, in the background.
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
        if self.journal.segment_count:
            log.info(
                "the event journal holds %d segments (%d bytes) from before; replaying them in the background",
                self.journal.segment_count,
                self.journal.size_bytes,
            )
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
                self._lose("close_deadline", len(leftovers), "they arrived after the close deadline")
                continue
            try:
                await asyncio.wait_for(self._spill(leftovers), spill_deadline - loop.time())
            except TimeoutError:
                self._lose("close_deadline", len(leftovers), "the journal did not take them before the close deadline")
        self._state = "closed"
        await self._io(self.journal.close)
        await self._io(self.dead_letter.close)
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
    def dead_letter(self) -> DeadLetter:
        if self._dead_letter is None:
            raise RuntimeError("a disabled event writer has no dead-letter directory")
        return self._dead_letter

    @property
    def stats(self) -> WriterStats:
        replay = self._replay
        return WriterStats(
            buffered=len(self._buffer) + len(self._overflow) + len(self._inflight) + len(self._spilling),
            written_total=self._written,
            spilled_total=self._spilled,
            replayed_total=self._replayed,
            dropped_total=self._losses.gone_total,
            flush_errors_total=self._flush_errors,
            last_error=self._last_error,
            store_kind=self.store.kind,
            healthy=self._healthy,
            journal_bytes=self._journal.size_bytes if self._journal else 0,
            journal_segments=self._journal.segment_count if self._journal else 0,
            lost=dict(self._losses.counts),
            lost_total=self._losses.total,
            dead_lettered_total=self._losses.kept_total,
            dead_letter_bytes=self._dead_letter.size_bytes if self._dead_letter else 0,
            replay_pending=len(replay.events) - replay.done if replay is not None else 0,
        )

    # -- background ----------------------------------------------------------------------------

    async def _run_flusher(self) -> None:
        interval = self.config.flush_interval_ms / 1000
        replaying = False
        while True:
            # While the journal is being replayed the next round starts at once (it writes the
            # fresh events first); otherwise it waits for the interval or a full batch.
            if not replaying:
                try:
                    async with asyncio.timeout(interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            final = self._state == "closing"
            try:
                replaying = await self._flush_once(final=final)
            except Exception:  # a bug here must not stop the flusher for good
                replaying = False
                log.exception("event flush failed unexpectedly")
            if final:
                return

    async def _flush_once(self, *, final: bool) -> bool:
        """One round: fresh events, then the journal; True when journaled events are still waiting."""
        if not self._healthy and not final and time.monotonic() >= self._retry_at:
            await self._reconnect()
        while self._buffer and self._healthy:
            await self._write_or_spill(self._take(self._buffer, self.config.flush_max_events))
        if not self._healthy and self._buffer:
            # Down: move everything to disk now, so a crash loses at most one interval.
            await self._spill_inflight(self._take(self._buffer, len(self._buffer)))
        if self._healthy and not final:
            return await self._replay_for(self.config.flush_interval_ms / 1000)
        return False

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
        outcome = await self._store_isolating(protected, track_inflight=True)
        self._written += outcome.stored
        if outcome.error is not None:
            self._store_failed(outcome.error)
            await self._spill(outcome.remaining)
        else:
            self._healthy = True
        self._inflight = []

    async def _store_isolating(self, events: list[Event], *, track_inflight: bool) -> _Outcome:
        """Store ``events``, setting aside those the store will never take; stop at a failure that may pass.

        A batch refused for its content is halved, and each half tried again, until the events
        to blame stand alone; those go to the dead-letter directory.  Halves are tried in order
        and the first failure of another kind stops everything, so what is left is a suffix of
        ``events``.  Re-writing stored events adds nothing (``ON CONFLICT DO NOTHING``).
        """
        outcome = _Outcome()
        parts: deque[list[Event]] = deque([events] if events else [])
        reason: LossReason
        while parts:
            part = parts[0]
            try:
                await self.store.write(part)
            except StoreRejected as exc:
                reason, detail = "rejected", str(exc)
            except StoreError as exc:
                outcome.error = exc
                outcome.remaining = [e for p in parts for e in p]
                return outcome
            except Exception as exc:  # noqa: BLE001 - a bug that trips on some events must cost only those; logged
                reason, detail = "unprocessable", f"{type(exc).__name__}: {exc}"
                self._log_unprocessable("preparing %d events for the store failed", len(part), exc_info=exc)
            else:
                parts.popleft()
                outcome.stored += len(part)
                if track_inflight and parts:
                    self._inflight = [e for p in parts for e in p]
                continue
            parts.popleft()
            if len(part) == 1:
                await self._set_aside_events(part, reason, detail)
            else:
                mid = len(part) // 2
                parts.extendleft((part[mid:], part[:mid]))
            if track_inflight:
                self._inflight = [e for p in parts for e in p]
        return outcome

    async def _spill_inflight(self, batch: list[Event]) -> None:
        self._inflight = batch
        await self._spill(batch)
        self._inflight = []

    async def _spill(self, batch: list[Event]) -> None:
        failure: str | None = None
        try:
            accepted = await self._io(self._append, batch)
        except JournalError as exc:
            self._last_error = failure = str(exc)
            accepted = 0
        except Exception as exc:  # a bug must still end up counted, never as an exception in close()
            log.exception("journaling %d events failed", len(batch))
            self._last_error = failure = f"{type(exc).__name__}: {exc}"
            accepted = 0
        self._spilled += accepted
        if failure is not None:
            detail = f"the journal in {self.journal.directory} failed: {failure}"
            self._lose("journal_error", len(batch) - accepted, detail)
        elif accepted < len(batch):
            self._lose(
                "journal_full",
                len(batch) - accepted,
                f"the journal in {self.journal.directory} is full "
                f"({self.journal.size_bytes} of {self.journal.max_bytes} bytes)",
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

    async def _replay_for(self, budget_s: float) -> bool:
        """Replay the journal for up to ``budget_s``, a chunk at a time; True when it stopped with work left.

        It stops early once ``flush_max_events`` fresh events wait (``_wake``): they go first.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        while self._healthy and self._state == "running" and await self._replay_chunk():
            if self._wake.is_set() or loop.time() >= deadline:
                return True
        return False

    async def _replay_chunk(self) -> bool:
        """Write one chunk of the oldest journal segment; False when none is left or the store failed.

        A segment is deleted only once every event of it is stored or set aside, so a shutdown
        or crash midway loses nothing: the next process replays the segment again, idempotently.
        """
        replay = self._replay or await self._open_oldest_segment()
        if replay is None:
            return False
        chunk = replay.events[replay.done : replay.done + self.config.flush_max_events]
        if chunk:
            outcome = await self._store_isolating(chunk, track_inflight=False)
            self._replayed += outcome.stored
            replay.done += len(chunk) - len(outcome.remaining)
            if outcome.error is not None:
                self._store_failed(outcome.error)
                return False
        if replay.done >= len(replay.events):
            await self._set_aside_lines(replay)
            await self._io(self.journal.remove, replay.path)
            self._replay = None
            log.info(
                "replayed journal segment %s: %d events (%d segments, %d bytes left)",
                replay.path.name,
                len(replay.events),
                self.journal.segment_count,
                self.journal.size_bytes,
            )
        return True

    async def _open_oldest_segment(self) -> _Replay | None:
        segments = await self._io(self.journal.sealed_segments)
        if not segments:
            return None
        try:
            contents = await self._io(self.journal.read, segments[0])
        except FileNotFoundError:
            # Deleted behind our back: nothing left to replay or to count.
            await self._io(self.journal.remove, segments[0])
            return None
        except OSError as exc:
            self._log_unreadable("cannot read journal segment %s; it stays for a later attempt: %s", segments[0], exc)
            return None
        # Again: the policy may be stricter now than when the events were journaled.
        events = await asyncio.to_thread(self._protect, contents.events)
        self._replay = _Replay(contents.path, events, contents.bad_lines)
        log.info("replaying journal segment %s: %d events", contents.path.name, len(events))
        return self._replay

    async def _set_aside_lines(self, replay: _Replay) -> None:
        """Keep the segment's unreadable lines in the dead-letter directory, scrubbed by the PII policy."""
        for kind in ("torn", "corrupt"):
            lines = [b for b in replay.bad_lines if b.kind == kind]
            if not lines:
                continue
            reason: LossReason = "torn_line" if kind == "torn" else "corrupt_line"
            detail = f"{len(lines)} {kind} lines in journal segment {replay.path.name}"
            records = [
                DeadRecord.of_line(scrub_line(b.raw, self.config.pii), reason, f"{replay.path.name} line {b.number}")
                for b in lines
            ]
            await self._keep(records, reason, detail)

    async def _set_aside_events(self, events: list[Event], reason: LossReason, detail: str) -> None:
        await self._keep([DeadRecord.of_event(e, reason, detail) for e in events], reason, detail)

    async def _keep(self, records: list[DeadRecord], reason: LossReason, detail: str) -> None:
        try:
            kept = await self._io(self.dead_letter.append, records)
        except JournalError as exc:
            kept, detail = 0, f"{detail}; {exc}"
        except Exception as exc:  # a bug must still end up counted
            log.exception("writing %d dead-letter records failed", len(records))
            kept, detail = 0, f"{detail}; {type(exc).__name__}: {exc}"
        self._losses.record(reason, kept, f"{detail} (set aside in {self.dead_letter.directory})", kept=True)
        if kept < len(records):
            self._losses.record(
                reason,
                len(records) - kept,
                f"{detail}; the dead-letter directory {self.dead_letter.directory} is full "
                f"({self.dead_letter.size_bytes} of {self.dead_letter.max_bytes} bytes) or failing",
                kept=False,
            )

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
        return [_protect_one(e, mode) for e in events]

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

    def _lose(self, reason: LossReason, n: int, detail: str) -> None:
        """Count and log events that are gone (no copy kept); each reason is rate-limited on its own."""
        self._losses.record(reason, n, detail, kept=False)

    async def _io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._journal_io, fn, *args)


def _protect_one(event: Event, mode: str) -> Event:
    try:
        return apply_pii(event, mode)
    except Exception:  # noqa: BLE001 - a value the policy cannot read: keep the event, without what it governs
        _warn_pii(
            "applying the PII policy to event %r failed; storing it without client IP and user agent", event.event_id
        )
        return msgspec.structs.replace(event, client_ip=None, user_agent=None)


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
