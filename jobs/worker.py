"""`batchserve worker`: the app tier of queue mode.

Several long polls of NAME-requests run at once (each asking for up to ten messages) and every
message they bring goes, as its own submission, to the same in-process batcher the HTTP server
uses, so batches fill from the queue as they fill from HTTP. A message is held from receipt to
deletion (jobs/held.py) and answered by jobs/handling.py.

SIGTERM drains: receiving stops (a receive under way may still bring in what it took), what is
held is finished within the shutdown grace, events are flushed, answered messages are deleted and
the rest handed back to the queue. A second SIGINT gives up waiting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import make_asgi_app

from batchserve.jobs.aws import AwsClients, connect, is_missing, is_unavailable
from batchserve.jobs.backoff import Backoff, GaveUp, retrying
from batchserve.jobs.capacity import Capacity
from batchserve.jobs.config import ResourceNames, WorkerSettings
from batchserve.jobs.dead_letters import drain_dead_letters
from batchserve.jobs.errors import QueueModeSetupError
from batchserve.jobs.handling import Answered, Handler
from batchserve.jobs.held import HeldMessage, Holdings
from batchserve.jobs.metrics import MessageCounts, WorkerMetrics
from batchserve.jobs.protection import ScaleInProtection
from batchserve.jobs.recording import EventLedger
from batchserve.jobs.replies import Responder
from batchserve.model_repo.errors import ModelRepoError
from batchserve.serving.core import Serving
from batchserve.serving.drift import DriftMonitor
from batchserve.serving.gpu_requirement import cpu_only, names, reason
from batchserve.serving.metrics_listener import MetricsListener

log = logging.getLogger("batchserve.worker")

# Of the shutdown grace, what is kept for closing the models, flushing events and the last deletes.
CLOSE_SHARE = 0.3
# Connections beyond the long polls: reads, writes, responses, deletes and extensions in flight.
EXTRA_CONNECTIONS = 32
GRACE_CHECK_S = 0.1
# Once the drain begins, how long a receive under way may take to bring in its messages (a long poll
# of an empty queue takes longer and is cancelled: it had nothing).
RECEIVE_SETTLE_S = 0.5
_RECEIVE_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp"]


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.names: ResourceNames = settings.queue.names
        self._stop = asyncio.Event()
        self._give_up_at: float | None = None  # once draining: when held work stops being waited for
        self._tasks: set[asyncio.Task[None]] = set()
        self.answered_total = self.handed_back_total = 0
        self._serving: Serving | None = None
        self.metrics = WorkerMetrics()
        self._listener: MetricsListener | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if self._stop.is_set():
            if reason == "SIGINT":
                log.warning("second interrupt: giving up on held work")
                self._give_up_at = time.monotonic()
            return
        log.info("%s: draining (no more receives; finishing held work within %.1f s)", reason,
                 self.settings.worker.shutdown_grace_s)
        self._give_up_at = time.monotonic() + self.settings.worker.shutdown_grace_s * (1 - CLOSE_SHARE)
        self._stop.set()

    def keep_trying(self) -> bool:
        """Whether a failing S3/SQS call is still worth retrying: always, until the drain gives up."""
        return self._give_up_at is None or time.monotonic() < self._give_up_at

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        settings = self.settings
        try:
            self._listener = self._bind_metrics()
        except OSError as exc:
            log.error("cannot serve metrics on port %s: %s", settings.worker.metrics_port, exc)
            return 1
        # A model's fallback answers when its queue is full or its batch fails; the result names it
        # (jobs/handling.py). A model this worker does not serve is answered model_not_found.
        serving = Serving.build(settings.serving, settings.events, retire_grace_s=settings.worker.shutdown_grace_s,
                                on_batch=self.metrics.batches.observe_batch, cache=settings.cache)
        await serving.start()
        try:
            await serving.registry.load_configured()
            _check_gpu(settings.worker.require_gpu, serving)
        except ModelRepoError as exc:
            log.error("cannot serve: %s", exc)
            await serving.close(settings.worker.shutdown_grace_s)
            return 1
        self._serving = serving
        if self._listener is not None:
            await self._listener.start()
        try:
            async with connect(settings.queue, connections=settings.queue.pollers + EXTRA_CONNECTIONS) as aws, \
                    ScaleInProtection(settings.queue, settings.worker) as protection:
                return await self._serve(aws, serving, protection)
        finally:
            await self._close_serving()
            if self._listener is not None:
                await self._listener.stop()

    def _bind_metrics(self) -> MetricsListener | None:
        """The metrics socket, bound before anything is received (OSError when the port is taken)."""
        worker = self.settings.worker
        if worker.metrics_port is None:
            return None
        return MetricsListener(make_asgi_app(self.metrics.registry), worker.metrics_host, worker.metrics_port)

    async def _close_serving(self) -> None:
        """Queued and running batches finish, then the event writer flushes (or spills); once."""
        serving, self._serving = self._serving, None
        if serving is not None:
            await serving.close(self.settings.worker.shutdown_grace_s * CLOSE_SHARE)

    async def _serve(self, aws: AwsClients, serving: Serving, protection: ScaleInProtection) -> int:
        try:
            requests_url = await self._queue_url(aws, self.names.requests)
            responses_url = await self._queue_url(aws, self.names.responses)
        except QueueModeSetupError as exc:
            log.error("%s", exc)
            return 1
        except GaveUp:
            return 0  # stopped before SQS was ever reachable: nothing was received
        # Drift is read only from /metrics: watched only when it is exported.
        drift = DriftMonitor(self.settings.drift) if self._listener is not None and self.settings.drift.drift else None
        ledger = EventLedger(serving.writer, drift)
        holdings = Holdings(aws, requests_url, self.settings.queue.visibility_timeout_s, ledger.settled_total)
        self.metrics.watch(serving, drift, MessageCounts(
            held=holdings.__len__, answered=lambda: self.answered_total, handed_back=lambda: self.handed_back_total,
            deleted=lambda: holdings.deleted_total,
            redelivered_while_held=lambda: holdings.redelivered_while_held_total))
        protection.watch(holdings.__len__)
        responder = Responder(aws, self.names, responses_url, self.keep_trying)
        handler = Handler(serving, aws, self.names, self.settings.worker, responder, ledger, self.keep_trying)
        capacity = Capacity(self._held_limit(serving), self.settings.queue.receive_max_messages)
        keeper = asyncio.create_task(holdings.run(), name="holdings")
        dead_letters = asyncio.create_task(drain_dead_letters(aws, self.names, responder, ledger, self._stop),
                                           name="dead-letters")
        pollers = [asyncio.create_task(self._poll(aws, requests_url, capacity, holdings, handler), name=f"poll-{i}")
                   for i in range(self.settings.queue.pollers)]
        log.info("worker ready: %d long polls of %s (up to %d messages each, %d held at most); models: %s",
                 len(pollers), self.names.requests, self.settings.queue.receive_max_messages, capacity.limit,
                 ", ".join(serving.registry.names()))
        await self._stop.wait()
        dead_letters.cancel()
        # A receive under way may be bringing messages in: held, they are finished or handed back at
        # once; cancelled, its answer is lost and they stay hidden until their visibility timeout.
        _, still_polling = await asyncio.wait(pollers, timeout=RECEIVE_SETTLE_S)
        for task in still_polling:
            task.cancel()
        await asyncio.gather(*pollers, dead_letters, return_exceptions=True)
        await self._finish_held()
        # The events of answered messages are flushed before those messages are deleted.
        await self._close_serving()
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        try:
            await holdings.delete_settled(all_settled=True)
        except Exception as exc:  # noqa: BLE001 - undeleted answers are delivered again and answered the same
            log.warning("could not delete every answered message (%s); they will be answered again", exc)
        handed_back = await holdings.hand_back_unanswered()
        log.info("drained: %d answered, %d handed back to the queue, %d deleted", self.answered_total,
                 self.handed_back_total + handed_back, holdings.deleted_total)
        return 0

    def _held_limit(self, serving: Serving) -> int:
        """--max-held, but no more than the smallest model queue takes: a message the batcher refused
        as queue_full would go back to the queue and count as a delivery towards the dead-letter queue."""
        wanted = self.settings.worker.max_held
        room = min((m.batching.max_queue_size for m in serving.registry.loaded()), default=wanted)
        if room < wanted:
            log.warning("holding at most %d messages (the smallest model queue), not --max-held %d", room, wanted)
        return min(wanted, room)

    async def _finish_held(self) -> None:
        """Wait for the held messages' handlers until the drain gives up on them (a second SIGINT
        brings that moment forward), then cancel the rest: their messages are handed back."""
        pending = set(self._tasks)
        if pending:
            log.info("finishing %d held message(s)", len(pending))
        while pending and self.keep_trying():
            _, pending = await asyncio.wait(pending, timeout=GRACE_CHECK_S)
        if pending:
            log.warning("shutdown grace running out: giving up on %d held message(s)", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _queue_url(self, aws: AwsClients, name: str) -> str:
        try:
            answer = await retrying(lambda: aws.sqs.get_queue_url(QueueName=name), f"finding queue {name}", log,
                                    lambda: not self._stop.is_set())
        except GaveUp:
            raise
        except Exception as exc:
            if is_missing(exc):
                raise QueueModeSetupError(f"queue {name} does not exist; run `batchserve queue up --name "
                                          f"{self.names.name}`") from None
            raise
        return str(answer["QueueUrl"])

    # ---- receiving ------------------------------------------------------------------------------
    async def _poll(self, aws: AwsClients, url: str, capacity: Capacity, holdings: Holdings, handler: Handler) -> None:
        queue = self.settings.queue
        backoff = Backoff()
        while not self._stop.is_set():
            wanted = await capacity.reserve(queue.receive_max_messages)
            if self._stop.is_set():  # the drain began while this poll waited for room
                capacity.release(wanted)
                break
            try:
                answer = await aws.sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=wanted, WaitTimeSeconds=queue.wait_time_s,
                    VisibilityTimeout=queue.visibility_timeout_s, MessageSystemAttributeNames=_RECEIVE_ATTRIBUTES)
            except asyncio.CancelledError:
                capacity.release(wanted)
                raise
            except Exception as exc:  # noqa: BLE001 - the poll backs off and tries again, whatever failed
                capacity.release(wanted)
                await self._after_failed_receive(exc, backoff)
                continue
            if backoff.failures:
                log.info("receiving again after %d failed attempt(s)", backoff.failures)
            backoff.reset()
            messages: list[dict[str, Any]] = answer.get("Messages", [])
            capacity.release(wanted - len(messages))
            for raw in messages:
                held = HeldMessage.from_sqs(raw)
                if holdings.add(held):
                    self._spawn(self._handle(held, holdings, handler, capacity), f"message-{held.message_id}")
                else:
                    capacity.release()
                    log.info("message %s delivered again while held; it is answered once", held.message_id)

    async def _after_failed_receive(self, exc: Exception, backoff: Backoff) -> None:
        delay = backoff.next_delay()
        if backoff.failures == 1 or backoff.failures % 20 == 0:
            if is_unavailable(exc):
                log.warning("SQS unavailable (%s); retrying in %.1f s (backing off up to %.0f s)", exc, delay,
                            backoff.max_s)
            elif is_missing(exc):
                log.error("queue %s is gone (%s); retrying in %.1f s", self.names.requests, exc, delay)
            else:
                log.error("receiving failed; retrying in %.1f s", delay, exc_info=exc)
        await asyncio.sleep(delay)

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(work)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, held: HeldMessage, holdings: Holdings, handler: Handler, capacity: Capacity) -> None:
        try:
            outcome = await handler.handle(held)
        except asyncio.CancelledError:
            capacity.release()
            raise  # still held and unanswered: handed back at the end of the drain
        except Exception as exc:  # a bug must not stop the worker; the message is retried
            log.error("message %s failed unexpectedly", held.message_id, exc_info=exc)
            capacity.release()
            await holdings.hand_back(held, delay_s=1)
            return
        capacity.release()
        if isinstance(outcome, Answered):
            self.answered_total += 1
            holdings.answered(held, outcome.event_number)
        else:
            self.handed_back_total += 1
            log.warning("message %s handed back for another try: %s", held.message_id, outcome.reason)
            await holdings.hand_back(held, outcome.delay_s)


def _check_gpu(required: bool, serving: Serving) -> None:
    """--require-gpu: a worker whose models run on CPU only takes no messages (ModelRepoError says why)."""
    if not required:
        return
    missing = cpu_only(serving.registry.loaded())
    if missing:
        import onnxruntime as ort  # only here: a worker that requires nothing never asks

        raise ModelRepoError(f"--require-gpu: {', '.join(names(missing))} would run on CPU only "
                             f"({reason(missing, list(ort.get_available_providers()))})")


def run_worker(settings: WorkerSettings, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> int:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(Worker(settings).run())
