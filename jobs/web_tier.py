"""The web tier's backend: each image goes to the workers through S3 and SQS, and the answer comes
back on this instance's own reply queue.

For every image: the bytes go to the input bucket, a request message naming them (and this
instance's reply queue) goes to NAME-requests, and the request waits for the response whose
`image_id` is its own. Long polls on the reply queue hand each response to the request that waits
for it, whichever instance's worker answered. A request waits at most `--queue-timeout-ms` (or
its own shorter deadline), then answers 504 as in direct mode; a late answer is dropped.

Events: the worker writes the row of every image that reached the queue (the message carries who
asked and when), so those samples are marked `recorded_elsewhere`; an image that never reached the
queue (S3 or SQS away, a type refused here) is recorded by the web tier as any other refusal.

Readiness follows the reply polls: while S3 or SQS fail, /readyz says 503 so a load balancer
moves traffic to instances that can reach them, and requests answer 503 `queue_unavailable`
at once instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from batchserve.jobs.aws import AwsClients, connect, is_missing, is_unavailable
from batchserve.jobs.backoff import Backoff, GaveUp
from batchserve.jobs.config import INLINE_DEFAULT_BYTES, MAX_RECEIVE_MESSAGES, MAX_WAIT_TIME_S, QueueLocation
from batchserve.jobs.errors import QueueModeSetupError
from batchserve.jobs.messages import RequestMessage, Result, decode_result, encode
from batchserve.jobs.replies import Responder
from batchserve.jobs.reply_reaper import keep_alive_and_reap
from batchserve.jobs.request_builder import carried, request_message
from batchserve.jobs.resources import queue_url
from batchserve.model_repo.image_formats import check_declared_type
from batchserve.serving.answer_markers import NO_LOGITS, cache_hit, hashed_on_loop, stand_in
from batchserve.serving.backend import BackendName
from batchserve.serving.cache import CacheHit
from batchserve.serving.classifier import Classification, Classified, Deadline, Failed, ImageInput, Prediction
from batchserve.serving.errors import ErrorInfo, describe, retry_after, status_of
from batchserve.serving.recording import Caller
from batchserve.serving.registry import LoadedModel

log = logging.getLogger("batchserve.web_tier")

UPLOAD_PREFIX = "uploads"
# A reply queue holds answers for seconds; an hour is plenty, and what a killed instance leaves expires.
REPLY_RETENTION_S = 3600
# An answer is deleted right after it is received; one whose receive was lost (the poll's connection
# died, as in an outage) must come back in seconds, while its request still waits, not in 30.
REPLY_VISIBILITY_S = 2
REPLY_QUEUE_ATTRIBUTES = {"MessageRetentionPeriod": str(REPLY_RETENTION_S),
                          "VisibilityTimeout": str(REPLY_VISIBILITY_S)}
RECOVERY_POLL_S = 2.0


def unavailable(what: str, exc: BaseException | None = None) -> ErrorInfo:
    detail = f": {exc}" if exc is not None else ""
    return ErrorInfo(503, "queue_unavailable", f"the queue backend cannot reach S3/SQS ({what}{detail})",
                     retry_after(5))


TIMED_OUT = ErrorInfo(504, "deadline_exceeded", "no worker answered before the request's deadline")


@dataclass(frozen=True)
class WebTierSettings:
    location: QueueLocation
    timeout_ms: float
    reply_pollers: int = 2
    wait_time_s: int = MAX_WAIT_TIME_S
    inline_max_bytes: int = INLINE_DEFAULT_BYTES  # images up to this size also travel in their message


class QueueBackend:
    """The queue backend of `batchserve serve --backend queue`; see the module docstring."""

    name: BackendName = "queue"

    def __init__(self, settings: WebTierSettings) -> None:
        self.settings = settings
        self.names = settings.location.names
        self.instance_id = uuid.uuid4().hex
        self.reply_queue = f"{self.names.reply_prefix}{self.instance_id}"
        self._stack = contextlib.AsyncExitStack()
        self._aws: AwsClients | None = None
        self._requests_url = ""
        self._reply_url = ""
        self._sender: Responder | None = None
        self._waiting: dict[str, asyncio.Future[Result]] = {}
        self._pollers: list[asyncio.Task[None]] = []
        self._reachable = False
        self._closing = False

    # ---- lifecycle ---------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._reachable and not self._closing

    @property
    def aws(self) -> AwsClients:
        if self._aws is None:
            raise RuntimeError("the queue backend is not started")
        return self._aws

    async def start(self) -> None:
        """Finds the deployment's queue and buckets, creates this instance's reply queue, starts
        its long polls. Raises QueueModeSetupError when the deployment does not exist."""
        aws = self._aws = await self._stack.enter_async_context(
            connect(self.settings.location, connections=self.settings.reply_pollers + 32))
        requests_url = await queue_url(aws, self.names.requests)
        if requests_url is None:
            raise QueueModeSetupError(f"queue {self.names.requests} does not exist; run "
                                      f"`batchserve queue up --name {self.names.name}` first")
        try:
            await aws.s3.head_bucket(Bucket=self.names.input_bucket)
        except Exception as exc:
            if is_missing(exc):
                raise QueueModeSetupError(f"bucket {self.names.input_bucket} does not exist; run "
                                          f"`batchserve queue up --name {self.names.name}` first") from exc
            raise
        self._requests_url = requests_url
        created = await aws.sqs.create_queue(QueueName=self.reply_queue, Attributes=REPLY_QUEUE_ATTRIBUTES)
        self._reply_url = str(created["QueueUrl"])
        self._sender = Responder(aws, self.names, requests_url, keep_trying=lambda: False)
        self._reachable = True
        self._pollers = [asyncio.create_task(self._poll(), name=f"reply-poll-{i}")
                         for i in range(self.settings.reply_pollers)]
        self._pollers.append(asyncio.create_task(
            keep_alive_and_reap(aws, self.names, self.reply_queue, lambda: self._reply_url), name="reply-reaper"))
        log.info("queue backend ready: images to %s via %s, answers on %s", self.names.input_bucket,
                 self.names.requests, self.reply_queue)

    async def close(self, timeout_s: float) -> None:
        """Stops the polls, fails what still waits (503 draining), deletes the reply queue."""
        self._closing = True
        for task in self._pollers:
            task.cancel()
        await asyncio.gather(*self._pollers, return_exceptions=True)
        for future in self._waiting.values():
            if not future.done():
                future.cancel()
        if self._aws is not None and self._reply_url:
            try:
                await asyncio.wait_for(self._aws.sqs.delete_queue(QueueUrl=self._reply_url), max(0.1, timeout_s))
            except Exception as exc:  # noqa: BLE001 - `queue down` reaps what is left
                log.warning("could not delete reply queue %s (%s); `batchserve queue down` removes it",
                            self.reply_queue, exc)
        await self._stack.aclose()

    # ---- classifying -------------------------------------------------------------------
    async def classify_images(self, model: LoadedModel, images: Sequence[ImageInput], k: int, deadline: Deadline,
                              caller: Caller) -> Classification:
        wait_until = time.monotonic() + self.settings.timeout_ms / 1000.0
        if deadline.at is not None:
            wait_until = min(wait_until, deadline.at)
        answers = await asyncio.gather(*(self._one(position, image, model, k, wait_until, caller)
                                         for position, image in enumerate(images)))
        return Classification(model, list(answers))

    async def submit(self, message: RequestMessage, data: bytes | None, content_type: str | None) -> None:
        """Stores `data` (when given) at the message's image key and sends the message to NAME-requests.
        Raises what S3/SQS raised: `is_unavailable` tells an outage."""
        if data is not None:
            await self.aws.objects.put(message.image_bucket, message.image_key, data, content_type)
        assert self._sender is not None
        await self._sender.send(self._requests_url, encode(message).decode())

    async def _one(self, position: int, image: ImageInput, model: LoadedModel, k: int, wait_until: float,
                   caller: Caller) -> Classified | Failed:
        try:
            check_declared_type(image.content_type, image.data)  # refused here, as in direct mode: no trip
        except Exception as exc:  # noqa: BLE001 - the image's own error, answered and recorded here
            return Failed(position, image, describe(exc), "decode")
        if not self._reachable:
            return Failed(position, image, unavailable("the last call failed"), "batch")
        image_id = uuid.uuid4().hex
        inline = carried(image.data, self.settings.inline_max_bytes)
        message = request_message(image_id=image_id, bucket=self.names.input_bucket, key=f"{UPLOAD_PREFIX}/{image_id}",
                                  file_name=image.filename, model=model, top_k=k, caller=caller,
                                  reply_to=self._reply_url, inline=inline, content_type=image.content_type)
        answer: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting[image_id] = answer
        try:
            try:
                await asyncio.wait_for(self.submit(message, image.data, image.content_type),
                                       max(0.001, wait_until - time.monotonic()))
            except TimeoutError:
                return Failed(position, image, TIMED_OUT, "batch")
            except GaveUp as exc:
                self._reachable = False
                return Failed(position, image, unavailable("sending the image", exc), "batch")
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self._reachable = False
                return Failed(position, image, unavailable("sending the image", exc), "batch")
            try:
                result = await asyncio.wait_for(answer, max(0.001, wait_until - time.monotonic()))
            except TimeoutError:
                return Failed(position, image, TIMED_OUT, "batch", recorded_elsewhere=True)
            except asyncio.CancelledError:
                if self._closing:
                    return Failed(position, image, ErrorInfo(503, "draining", "the server is shutting down; "
                                  "retry on another instance", retry_after(1)), "batch", recorded_elsewhere=True)
                raise
        finally:
            self._waiting.pop(image_id, None)
        hit = None
        if result.cache == "hit":  # the digest, size and format of the image, as a direct-mode hit has them
            hit = cache_hit(image) if hashed_on_loop(image) else await asyncio.to_thread(cache_hit, image)
        return _sample(position, image, model, result, hit)

    # ---- answers -----------------------------------------------------------------------
    async def _poll(self) -> None:
        # While S3/SQS are away requests are refused at once, so the polls are what notices their
        # return: they back off to 2 s at most, not the worker's 10.
        aws, backoff = self.aws, Backoff(max_s=RECOVERY_POLL_S)
        while not self._closing:
            try:
                # After a failure, a short poll: its answer says at once that SQS is back.
                answer = await aws.sqs.receive_message(
                    QueueUrl=self._reply_url, MaxNumberOfMessages=MAX_RECEIVE_MESSAGES,
                    WaitTimeSeconds=self.settings.wait_time_s if self._reachable else 0)
            except Exception as exc:  # noqa: BLE001 - an outage or a deleted queue: wait and try again
                if self._reachable:
                    log.warning("receiving answers from %s failed (%s); backing off", self.reply_queue, exc)
                self._reachable = False
                if is_missing(exc):
                    await self._recreate_reply_queue()
                await backoff.wait()
                continue
            if not self._reachable:
                log.info("S3/SQS answer again")
            self._reachable = True
            backoff.reset()
            messages: list[dict[str, Any]] = answer.get("Messages", [])
            for message in messages:
                self._deliver(message.get("Body", ""))
            if messages:
                asyncio.get_running_loop().create_task(self._delete(messages))

    def _deliver(self, body: str) -> None:
        try:
            result = decode_result(body)
        except msgspec.DecodeError:
            log.warning("dropped a reply that is not a result: %.200r", body)
            return
        future = self._waiting.get(result.image_id or "")
        if future is not None and not future.done():
            future.set_result(result)

    async def _delete(self, messages: list[dict[str, Any]]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        try:
            await self.aws.sqs.delete_message_batch(QueueUrl=self._reply_url, Entries=entries)
        except Exception as exc:  # noqa: BLE001 - undeleted answers come back and are dropped as late
            log.debug("deleting answers failed: %s", exc)

    async def _recreate_reply_queue(self) -> None:
        """Someone deleted this instance's reply queue (`queue down` while it ran): make it again."""
        with contextlib.suppress(Exception):
            created = await self.aws.sqs.create_queue(QueueName=self.reply_queue, Attributes=REPLY_QUEUE_ATTRIBUTES)
            self._reply_url = str(created["QueueUrl"])


def _sample(position: int, image: ImageInput, model: LoadedModel, result: Result,
            hit: CacheHit | None = None) -> Classified | Failed:
    """A worker's result as the sample outcome a route answers from (the worker recorded its event),
    with the worker's markers: a cache hit, or the fallback that answered for `model`."""
    if isinstance(result.error, msgspec.UnsetType) and not isinstance(result.predictions, msgspec.UnsetType):
        timing = result.timing_ms
        answered_by = None
        if isinstance(result.fallback_for, str) and result.model is not None and result.model_version is not None:
            answered_by = stand_in(None, model, result.model, result.model_version)
        return Classified(
            position, None, [Prediction(p.class_id, p.label, p.score) for p in result.predictions], NO_LOGITS,
            timing.queue if timing else 0.0, timing.inference if timing else 0.0, result.batch_size or 0,
            recorded_elsewhere=True, sent=image, cached=hit, stand_in=answered_by,
        )
    error = result.error
    if isinstance(error, msgspec.UnsetType):
        info = ErrorInfo(502, "invalid_answer", "the worker's answer held neither predictions nor an error")
    else:
        info = ErrorInfo(status_of(error.code), error.code, error.message)
    return Failed(position, image, info, "batch", recorded_elsewhere=True)
