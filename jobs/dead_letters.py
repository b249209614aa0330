"""Dead letters: a request that failed three deliveries is answered all the same, as `dead_lettered`.

A message lands in NAME-requests-dlq when no worker answered it in three deliveries (workers
crashed on it, or S3/SQS kept failing). Nobody would ever learn that: its job would stay
`running` and a client waiting for it would wait forever. So each worker runs a drainer beside
its polls. Every DRAIN_INTERVAL_S it makes one pass over the dead-letter queue; for each message
whose result object does not exist yet, it records one event (error `dead_lettered`), writes the
error result, and sends the response (to the message's reply queue, else NAME-responses).

The messages stay in the dead-letter queue, so `batchserve queue redrive` can send them again
once the cause is fixed; a redriven message that then succeeds overwrites the `dead_lettered`
result with its answer (same key). A pass hides the messages it receives only while it runs (at
most PASS_MAX_S, usually well under a second) and makes them visible again at its end: hiding them
longer would keep them from `queue redrive`, which can move only visible messages. Messages a pass
has settled are remembered (by message id), so later passes skip them without an S3 call; a
restarted worker checks each once more with a HEAD. A redrive run while a pass holds some
messages moves the others: run it again to move the rest.

Events: the dead-letter row has an id of its own (derived from the image id and
`dead_lettered`), so it is recorded once however many passes or workers see the message, and a
redriven delivery that succeeds adds its own row: two attempts, two rows.

Malformed messages (they cannot be answered: no image id to key a result) are logged once and
left where they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from botocore.exceptions import ClientError

from batchserve.jobs.aws import AwsClients, is_missing
from batchserve.jobs.backoff import Backoff, GaveUp, retrying
from batchserve.jobs.config import MAX_RECEIVE_MESSAGES, ResourceNames
from batchserve.jobs.errors import InvalidReplyQueue, MalformedMessage
from batchserve.jobs.handling import ROUTE_JOBS, ROUTE_SYNC
from batchserve.jobs.held import HeldMessage
from batchserve.jobs.messages import ErrorBody, RequestMessage, Result, encode, event_id, parse_request
from batchserve.jobs.recording import EventLedger
from batchserve.jobs.replies import ReplyQueueGone, Responder
from batchserve.jobs.resources import queue_url
from batchserve.serving.errors import ErrorInfo, status_of
from batchserve.serving.recording import Caller

log = logging.getLogger("batchserve.dead_letters")

DEAD_LETTERED = "dead_lettered"
DRAIN_INTERVAL_S = 30.0
# While a pass looks at its messages they are hidden this long; the pass ends (and shows them
# again) after PASS_MAX_S at most, well before.
PASS_HOLD_S = 300
PASS_MAX_S = 60.0
RECEIVE_WAIT_S = 1  # long enough that an empty answer means the queue has nothing visible left
REMEMBERED_MAX = 100_000
_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp"]
_ERROR = ErrorInfo(status_of(DEAD_LETTERED), DEAD_LETTERED,
                   "no worker answered this image in three deliveries (a worker crashed on it, or S3/SQS kept "
                   "failing); it waits in the dead-letter queue: `batchserve queue redrive` sends it again")


def dead_letter_event_id(image_id: str) -> str:
    """The id of an image's dead-letter event: not its classification's ('#' is in no image id)."""
    return event_id(f"{image_id}#{DEAD_LETTERED}")


class DeadLetterDrainer:
    def __init__(self, aws: AwsClients, names: ResourceNames, responder: Responder, ledger: EventLedger,
                 keep_trying: Callable[[], bool]) -> None:
        self.aws = aws
        self.names = names
        self.responder = responder
        self.ledger = ledger
        self.keep_trying = keep_trying
        self.answered_total = 0
        self._url: str | None = None
        self._settled: OrderedDict[str, None] = OrderedDict()  # message ids already answered, or unanswerable

    async def drain_once(self, stop: asyncio.Event) -> int:
        """One pass over the dead-letter queue; returns how many dead letters it answered."""
        url = self._url = self._url or await queue_url(self.aws, self.names.dead_letters)
        if url is None:
            log.warning("queue %s does not exist; dead letters are not answered", self.names.dead_letters)
            return 0
        held: list[HeldMessage] = []
        answered = 0
        started = time.monotonic()
        try:
            while not stop.is_set() and time.monotonic() - started < PASS_MAX_S:
                answer = await self.aws.sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=MAX_RECEIVE_MESSAGES, WaitTimeSeconds=RECEIVE_WAIT_S,
                    VisibilityTimeout=PASS_HOLD_S, MessageSystemAttributeNames=_ATTRIBUTES)
                messages = [HeldMessage.from_sqs(raw) for raw in answer.get("Messages", [])]
                if not messages:
                    break
                held += messages
                fresh = [m for m in messages if m.message_id not in self._settled]
                outcomes = await asyncio.gather(*(self._settle(m) for m in fresh))
                answered += sum(outcomes)
        finally:
            await self._release(url, held)
        self.answered_total += answered
        if answered:
            log.info("answered %d dead letter(s) as %s", answered, DEAD_LETTERED)
        return answered

    async def _settle(self, held: HeldMessage) -> bool:
        """Answer one dead letter unless its result exists; True when it was answered now."""
        try:
            request = parse_request(held.body)
        except MalformedMessage as exc:
            log.warning("dead letter %s is malformed (%s); left in %s", held.message_id, exc.message,
                        self.names.dead_letters)
            self._remember(held)
            return False
        try:
            if await self._result_exists(request):
                self._remember(held)
                return False
            await self._answer(request, held)
        except GaveUp:
            return False  # stopping: the next pass, of this worker or another, answers it
        except Exception as exc:  # noqa: BLE001 - unanswered, it is tried again on the next pass
            log.warning("could not answer dead letter %s (image %s): %s", held.message_id, request.image_id, exc)
            return False
        self._remember(held)
        return True

    async def _result_exists(self, request: RequestMessage) -> bool:
        key = request.result_key
        try:
            await retrying(lambda: self.aws.s3.head_object(Bucket=self.names.output_bucket, Key=key),
                           f"checking s3://{self.names.output_bucket}/{key}", log, self.keep_trying)
        except ClientError as exc:
            if is_missing(exc):
                return False
            raise
        return True

    async def _answer(self, request: RequestMessage, held: HeldMessage) -> None:
        """Record the event, store the result, send the response: in this order, as a worker does."""
        received_at = request.received_at or held.sent_at
        recorder = self.ledger.recorder(dead_letter_event_id(request.image_id), received_at)
        caller = Caller(request.request_id, request.user, request.client_ip, request.user_agent)
        waited_ms = (datetime.now(UTC) - received_at).total_seconds() * 1000.0 if received_at else 0.0
        recorder.record_refused(caller, ROUTE_JOBS if request.job_id else ROUTE_SYNC, _ERROR, max(0.0, waited_ms),
                                request.model, request.version)
        result = Result(image_id=request.image_id, request_id=request.request_id,
                        image_file_name=request.image_file_name, prediction_value=None,
                        error=ErrorBody(_ERROR.code, _ERROR.message), model=request.model,
                        model_version=request.version, job_id=request.job_id, timing_ms=None)
        body = encode(result)
        key = request.result_key
        await retrying(lambda: self.aws.s3.put_object(Bucket=self.names.output_bucket, Key=key, Body=body,
                                                      ContentType="application/json"),
                       f"writing s3://{self.names.output_bucket}/{key}", log, self.keep_trying)
        try:
            destination = await self.responder.destination(request.reply_to)
        except InvalidReplyQueue:
            destination = self.responder.responses_url
        if destination is not None:
            with contextlib.suppress(ReplyQueueGone):  # nobody waits any more: the result is stored
                await self.responder.send(destination, body.decode())

    def _remember(self, held: HeldMessage) -> None:
        self._settled[held.message_id] = None
        while len(self._settled) > REMEMBERED_MAX:
            self._settled.popitem(last=False)

    async def _release(self, url: str, held: Sequence[HeldMessage]) -> None:
        """Make the pass's messages visible again, for `queue redrive` (and the next pass)."""
        for start in range(0, len(held), MAX_RECEIVE_MESSAGES):
            chunk = held[start:start + MAX_RECEIVE_MESSAGES]
            try:
                await self.aws.sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)])
            except Exception as exc:  # noqa: BLE001 - they show again after PASS_HOLD_S anyway
                log.warning("could not show %d dead letters again (%s); they return within %d s", len(chunk), exc,
                            PASS_HOLD_S)


async def drain_dead_letters(aws: AwsClients, names: ResourceNames, responder: Responder, ledger: EventLedger,
                             stop: asyncio.Event, *, interval_s: float = DRAIN_INTERVAL_S) -> None:
    """Answer dead letters every `interval_s` until `stop` is set (a pass under way ends early)."""
    drainer = DeadLetterDrainer(aws, names, responder, ledger, keep_trying=lambda: not stop.is_set())
    backoff = Backoff()
    while not stop.is_set():
        wait_s = interval_s
        try:
            await drainer.drain_once(stop)
            backoff.reset()
        except Exception as exc:  # noqa: BLE001 - the drainer outlives any failure; it tries again later
            wait_s = min(interval_s, backoff.next_delay())
            if backoff.failures == 1:
                log.warning("draining %s failed (%s); trying again", names.dead_letters, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait_s)
