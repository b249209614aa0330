"""The dynamic batcher: callers submit requests; batches are cut from the queue whenever a slot is free.

Driven by callbacks, with no scheduler task to wake: ``submit()`` asks for one pass of the scheduler on the
next turn of the event loop (so requests arriving in the same turn share a batch and a lone request on an idle
batcher goes at once), a finishing batch runs a pass itself before it answers its callers (so under load the
next batch starts before their code runs), and a timer is armed only while a batch is held open for
``max_queue_delay_ms`` (or, with ``latency_slo_ms``, for as long as the target allows: see slo.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from batchserve.batching.config import BatchingConfig
from batchserve.batching.errors import BatcherClosed, BatchingError, DeadlineExceeded, QueueFull
from batchserve.batching.fit import CostEstimate
from batchserve.batching.invoke import check_results, is_async_callable, start_call
from batchserve.batching.outcome import BatchOutcome, BatchRecord, deliver
from batchserve.batching.policy import decide
from batchserve.batching.queue import Part, Pending, RequestQueue
from batchserve.batching.slo import SloOutlook, SloTracker
from batchserve.batching.stats import BatcherStats, StatsRecorder

__all__ = ["Batcher", "BatchOutcome", "BatchRecord", "BatchFn"]

T = TypeVar("T")
R = TypeVar("R")

BatchFn = Callable[[list[T]], Awaitable[list[R]]] | Callable[[list[T]], list[R]]

logger = logging.getLogger(__name__)


class _Batch:
    __slots__ = ("parts", "size", "started_at", "queue_s_max", "future")

    def __init__(self, parts: list[Part], size: int, started_at: float, queue_s_max: float) -> None:
        self.parts = parts
        self.size = size
        self.started_at = started_at
        self.queue_s_max = queue_s_max
        self.future: asyncio.Future[Any] | None = None


class Batcher(Generic[T, R]):
    """Queue requests of samples and run them through ``batch_fn`` in batches (one instance per model version).

    ``batch_fn`` takes a list of items and returns one result per item, in order. A coroutine function is
    awaited as a task on the loop; a plain function runs in ``executor`` (the loop's default when None), since
    model runtimes release the GIL and must not block the loop.
    """

    def __init__(
        self,
        batch_fn: BatchFn[T, R],
        config: BatchingConfig = BatchingConfig(),
        *,
        name: str = "batcher",
        executor: concurrent.futures.Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        if not callable(batch_fn):
            raise TypeError(f"batch_fn must be callable, got {type(batch_fn).__name__}")
        if not isinstance(config, BatchingConfig):
            raise TypeError(f"config must be a BatchingConfig, got {type(config).__name__}")
        self._fn = batch_fn
        self._is_async = is_async_callable(batch_fn)
        self._config = config
        self._name = name
        self._executor = executor
        self._clock = clock
        self._on_batch = on_batch
        self._queue: RequestQueue[T] = RequestQueue()
        self._running: set[_Batch] = set()
        self._stats = StatsRecorder()
        self._slo = SloTracker(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pass_scheduled: asyncio.Handle | None = None
        self._delay_timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closing = False
        self._closed_reason = "not accepting work: shutting down"

    # ----------------------------------------------------------------------------------------------- public

    @property
    def config(self) -> BatchingConfig:
        return self._config

    @property
    def name(self) -> str:
        return self._name

    @property
    def closing(self) -> bool:
        """True once ``close()`` began: new work is refused."""
        return self._closing

    @property
    def stats(self) -> BatcherStats:
        return self._stats.snapshot(
            queue_depth=self._queue.samples,
            queued_requests=self._queue.requests,
            inflight_batches=len(self._running),
            cost=self._slo.estimate,
        )

    @property
    def cost_estimate(self) -> CostEstimate | None:
        """The cost a + b·n fitted to the batches run so far (with or without a latency target), or None
        until their sizes varied enough to tell a from b."""
        return self._slo.estimate

    def refusal(self, size: int = 1) -> QueueFull | None:
        """The :class:`QueueFull` that submitting ``size`` items now would raise, or None when they fit.

        Costs two comparisons while there is room, so a front end can ask before every request and
        refuse one that could not be queued before doing any work on it (reading, decoding)."""
        if self._queue.samples + size <= self._config.max_queue_size:
            return None
        return self._queue_full(size)

    def start(self) -> None:
        """Bind the batcher to the running event loop. Idempotent; ``submit()`` calls it when needed."""
        loop = asyncio.get_running_loop()
        if self._loop is not None:
            if self._loop is not loop:
                raise RuntimeError(f"batcher {self._name!r} already runs on another event loop")
            return
        if self._closing:
            raise BatcherClosed(self._closed_reason)
        self._loop = loop

    async def submit(self, items: Sequence[T], *, deadline: float | None = None) -> BatchOutcome[R]:
        """Queue ``items`` and wait for their results.

        ``deadline`` is absolute, in ``clock`` time. Raises :class:`QueueFull` at once (nothing enqueued),
        :class:`DeadlineExceeded` when the deadline passes before all items were dispatched (undispatched items
        are dropped unrun), :class:`BatcherClosed` once ``close()`` began, or the batch function's own
        exception when a batch carrying these items failed. Cancelling the caller withdraws items not yet
        dispatched; results of items already running are discarded.
        """
        if self._closing:
            raise BatcherClosed(self._closed_reason)
        try:
            size = len(items)
        except TypeError:
            raise TypeError(f"items must be a sequence, got {type(items).__name__}") from None
        if size == 0:
            raise ValueError("submit() needs at least one item")
        loop = self._loop
        if loop is None:
            self.start()
            loop = self._loop
            assert loop is not None
        elif asyncio.get_running_loop() is not loop:
            raise RuntimeError(f"batcher {self._name!r} runs on another event loop")

        queue = self._queue
        if queue.samples + size > self._config.max_queue_size:
            self._stats.rejected_total += 1
            raise self._queue_full(size)
        now = self._clock()
        if deadline is not None:
            if not isinstance(deadline, (int, float)) or not math.isfinite(deadline):
                raise ValueError(f"deadline must be a finite clock time, got {deadline!r}")
            if deadline <= now:
                self._stats.expired_total += 1
                raise DeadlineExceeded(waited_s=0.0)

        future: asyncio.Future[BatchOutcome[R]] = loop.create_future()
        pending: Pending[T] = Pending(items, future, now, deadline)
        if deadline is not None:
            # A timer, not a check at dispatch alone: while every slot is busy nothing is dispatched, and the
            # caller must still hear about its deadline on time.
            pending.timer = loop.call_later(deadline - now, self._expire, pending)
        queue.push(pending)
        self._stats.requests_total += 1
        if self._pass_scheduled is None:
            self._pass_scheduled = loop.call_soon(self._scheduled_pass)
        try:
            return await future
        except asyncio.CancelledError:
            self._stats.cancelled_total += 1
            if queue.drop(pending):
                self._note_idle()
            raise

    async def close(self, *, timeout: float | None = None) -> None:
        """Stop accepting work and let queued and running batches finish. Idempotent.

        Queued requests are dispatched at once, without waiting out ``max_queue_delay_ms``. After ``timeout``
        seconds, whatever is still queued or running fails with :class:`BatcherClosed` (a batch already
        inside a thread cannot be interrupted; its results are discarded).
        """
        self._closing = True
        loop = self._loop
        if loop is None:
            return
        if self._drained is None:
            self._drained = loop.create_future()
            self._run_pass()  # flush: the delay no longer applies
        done, _ = await asyncio.wait({self._drained}, timeout=timeout)
        if not done:
            logger.warning(
                "batcher %s: close timed out after %ss with %d queued samples and %d running batches",
                self._name,
                timeout,
                self._queue.samples,
                len(self._running),
            )
            self._abort(BatcherClosed("shutting down: the shutdown grace period ran out"))

    def __repr__(self) -> str:
        return (
            f"<Batcher {self._name!r} queued={self._queue.samples} running={len(self._running)}"
            f"{' closing' if self._closing else ''}>"
        )

    # -------------------------------------------------------------------------------------------- scheduler

    def _scheduled_pass(self) -> None:
        self._pass_scheduled = None
        self._run_pass()

    def _run_pass(self) -> None:
        """Fill free slots with batches, as far as the policy allows; arm the delay timer when it says wait."""
        queue = self._queue
        config = self._config
        slots = config.max_inflight_batches
        targeted = config.latency_slo_ms is not None
        try:
            while len(self._running) < slots and queue.samples:
                oldest = queue.oldest()
                assert oldest is not None, "queue counts samples but holds no live request"
                now = self._clock()
                available = queue.samples
                slo: SloOutlook | None = None
                if targeted and not self._closing and available < config.max_batch_size:
                    slo = self._slo.outlook(
                        now, [(batch.started_at, batch.size) for batch in self._running], queue.earliest_deadline()
                    )
                decision = decide(config, available, now - oldest.submitted_at, flush=self._closing, slo=slo)
                if not decision.size:
                    self._arm_delay(decision.wait_s)
                    return
                self._dispatch(decision.size, now)
            self._note_idle()
        except Exception as exc:  # a bug here must not leave callers waiting forever
            logger.exception("batcher %s: scheduling failed; failing all queued and running work", self._name)
            self._closing = True
            self._closed_reason = f"batcher stopped by an internal error: {exc!r}"
            self._abort(BatcherClosed(self._closed_reason))

    def _arm_delay(self, wait_s: float) -> None:
        # One timer at most: the oldest request decides when the held batch must go, and a pass run for any
        # other reason re-arms it from the then oldest request.
        loop = self._loop
        assert loop is not None
        if self._delay_timer is not None:
            self._delay_timer.cancel()
        self._delay_timer = loop.call_later(wait_s, self._delay_over)

    def _delay_over(self) -> None:
        self._delay_timer = None
        self._run_pass()

    def _note_idle(self) -> None:
        """Resolve a pending close() once nothing is queued or running."""
        drained = self._drained
        if drained is not None and not drained.done() and not self._queue.samples and not self._running:
            if self._delay_timer is not None:
                self._delay_timer.cancel()
                self._delay_timer = None
            drained.set_result(None)

    def _dispatch(self, limit: int, now: float) -> None:
        items, parts, expired = self._queue.take(limit, now)
        for pending in expired:
            self._fail_expired(pending, now)
        if not parts:
            return
        size = len(items)
        queue_s_max = 0.0
        queue_wait = self._stats.queue_wait
        for pending, _start, stop in parts:
            waited = now - pending.submitted_at
            pending.queue_s = waited
            pending.batches += 1
            if size > pending.batch_size:
                pending.batch_size = size
            if waited > queue_s_max:
                queue_s_max = waited
            if stop == pending.size:
                queue_wait.add(waited)
        batch = _Batch(parts, size, now, queue_s_max)
        self._running.add(batch)
        loop = self._loop
        assert loop is not None
        future = start_call(self._fn, items, is_async=self._is_async, loop=loop, executor=self._executor)
        batch.future = future
        future.add_done_callback(functools.partial(self._finish, batch))

    def _finish(self, batch: _Batch, future: asyncio.Future[Any]) -> None:
        self._running.discard(batch)
        now = self._clock()
        compute_s = now - batch.started_at
        results: list[Any] | None = None
        error: BaseException | None
        if future.cancelled():
            error = (
                BatcherClosed("shutting down: the batch was cancelled")
                if self._closing
                else BatchingError("the batch function was cancelled")
            )
        else:
            error = future.exception()
            if error is None:
                results, error = check_results(future.result(), batch.size)
        self._slo.observe(batch.size, batch.started_at, now, ok=error is None)
        if error is not None:
            logger.log(
                logging.DEBUG if isinstance(error, BatcherClosed) else logging.WARNING,
                "batcher %s: batch of %d failed: %r",
                self._name,
                batch.size,
                error,
            )
        if error is None:
            # Refill the slot before answering anyone: under load the next batch is already queued, and
            # starting it now puts it ahead of every caller's continuation in the loop's ready queue.
            # Answering first left the device idle while this batch's callers ran (~1 ms for 32 of them).
            self._run_pass()
            deliver(batch.parts, results, None, compute_s, self._queue.drop)
        else:
            # Failing first drops the unsent rest of any split request here, so it is not computed in vain.
            deliver(batch.parts, None, error, compute_s, self._queue.drop)
            self._run_pass()
        if error is None and self._config.latency_slo_ms is not None:
            self._slo.answered(now, [pending.submitted_at for pending, _, stop in batch.parts if stop == pending.size])
        self._stats.batch_done(batch.size, compute_s, now, ok=error is None)
        if self._on_batch is not None:
            record = BatchRecord(batch.size, len(batch.parts), batch.queue_s_max, compute_s, error is None)
            try:
                self._on_batch(record)
            except Exception:  # an observer's bug must not stall the batcher
                logger.exception("batcher %s: on_batch observer failed", self._name)

    # ---------------------------------------------------------------------------------------------- failure

    def _expire(self, pending: Pending[T]) -> None:
        pending.timer = None
        if pending.future.done() or not self._queue.drop(pending):
            return
        self._fail_expired(pending, self._clock())
        self._note_idle()

    def _fail_expired(self, pending: Pending[T], now: float) -> None:
        self._stats.expired_total += 1
        if not pending.future.done():
            pending.future.set_exception(DeadlineExceeded(waited_s=max(0.0, now - pending.submitted_at)))

    def _abort(self, error: BatcherClosed) -> None:
        """Fail everything queued or running (close() past its timeout, or a scheduling bug)."""
        for pending in self._queue.live():
            self._queue.drop(pending)
            if not pending.future.done():
                pending.future.set_exception(error)
        for batch in list(self._running):
            for pending, _start, _stop in batch.parts:
                if not pending.future.done():
                    pending.future.set_exception(error)
            if batch.future is not None:
                batch.future.cancel()
        # Abandoned batches no longer hold a slot; one stuck in a thread reports back (ignored) when it ends.
        self._running.clear()
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _queue_full(self, requested: int) -> QueueFull:
        capacity = self._config.max_queue_size
        queued = self._queue.samples
        rate = self._stats.throughput(self._clock())
        excess = max(queued + requested - capacity, 1)
        # Time for the queue to drain enough to take this request, in whole seconds for Retry-After.
        retry = max(1.0, float(math.ceil(excess / rate))) if rate else 1.0
        return QueueFull(queued=queued, requested=requested, capacity=capacity, retry_after_s=retry)

