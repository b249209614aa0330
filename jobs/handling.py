"""What a worker does with one request message: read the image, classify it, store the result,
record the event, answer.

Errors that are the message's (malformed, unknown model, missing or undecodable image, bad
`top_k`) are answered as error results, never retried: a retry would fail the same way. Errors of
the moment (S3 or SQS away, the batcher full or closing, a failed batch) are not answered: the
message goes back to the queue for another try, and one that keeps failing ends in the
dead-letter queue after three deliveries.

An image of a cancelled job is answered `cancelled` before its image is read: no inference.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
from botocore.exceptions import ClientError

from batchserve.jobs.aws import AwsClients, error_code, is_missing
from batchserve.jobs.backoff import GaveUp, retrying
from batchserve.jobs.cancellation import CancelledJobs
from batchserve.jobs.config import ResourceNames, WorkerConfig
from batchserve.jobs.errors import ImageNotFound, InvalidReplyQueue, MalformedMessage
from batchserve.jobs.held import HeldMessage
from batchserve.jobs.job_errors import JobCancelled
from batchserve.jobs.messages import (
    ErrorBody,
    Prediction,
    RequestMessage,
    Result,
    Timing,
    encode,
    event_id,
    parse_request,
    result_key,
)
from batchserve.jobs.recording import EventLedger
from batchserve.jobs.replies import ReplyQueueGone, Responder
from batchserve.serving.classifier import Classified, Deadline, ImageInput, validate_top_k
from batchserve.serving.core import Serving
from batchserve.serving.errors import ErrorInfo, PayloadTooLarge, describe
from batchserve.serving.recording import Caller

log = logging.getLogger("batchserve.worker")

ROUTE_SYNC, ROUTE_JOBS = "v1", "jobs"
# After a failure of the moment, the message becomes visible again this much later.
RETRY_DELAY_S = 1


@dataclass(frozen=True)
class Answered:
    event_number: int  # the ledger number of its event: the message is deleted once that is settled


@dataclass(frozen=True)
class Retry:
    reason: str
    delay_s: int = RETRY_DELAY_S


Outcome = Answered | Retry


@dataclass
class Handler:
    serving: Serving
    aws: AwsClients
    names: ResourceNames
    config: WorkerConfig
    responder: Responder
    ledger: EventLedger
    keep_trying: Callable[[], bool]
    cancellations: CancelledJobs = field(init=False)

    def __post_init__(self) -> None:
        self.cancellations = CancelledJobs(self.aws, self.names, self.keep_trying)

    async def handle(self, held: HeldMessage) -> Outcome:
        try:
            request = parse_request(held.body)
        except MalformedMessage as exc:
            return await self._answer_malformed(held, exc)
        if held.receive_count > 1:
            log.info("message %s (image %s) delivered for the %d. time", held.message_id, request.image_id,
                     held.receive_count)
        try:
            return await self._answer(held, request)
        except GaveUp as exc:
            return Retry(f"S3 or SQS stayed unavailable until shutdown: {exc}", delay_s=0)

    async def _answer(self, held: HeldMessage, request: RequestMessage) -> Outcome:
        recorder = self.ledger.recorder(request.event_id, request.received_at or held.sent_at)
        caller = Caller(request.request_id, request.user, request.client_ip, request.user_agent)
        route = ROUTE_JOBS if request.job_id else ROUTE_SYNC
        destination: str | None = self.responder.responses_url
        model_name, version = request.model, request.version
        try:
            destination = await self.responder.destination(request.reply_to)
            if request.job_id is not None and await self.cancellations.cancelled(request.job_id):
                raise JobCancelled(f"job {request.job_id} was cancelled before this image ran")
            model = self.serving.registry.find(request.model, request.version)
            model_name, version = model.name, model.version
            k = validate_top_k(request.top_k, model)
            image = await self._read_image(request)
            deadline = Deadline.for_request(model, None, time.monotonic())
            classification = await self.serving.classifier.classify_images(model, [image], k, deadline)
        except GaveUp:
            raise
        except ClientError as exc:  # S3 or SQS refused (access denied, ...): not the message's fault
            log.warning("message %s: %s", held.message_id, exc)
            return Retry(f"refused by {exc.operation_name}: {error_code(exc)}")
        except Exception as exc:  # described: the message's fault is answered, the rest retried
            error = describe(exc)
            if error.status >= 500:
                if error.is_bug:
                    log.error("message %s failed unexpectedly", held.message_id, exc_info=exc)
                return Retry(f"{error.code}: {error.message}")
            recorder.record_refused(caller, route, error, _latency_ms(request, held), model_name, version)
            result = _error_result(request.image_id, request.request_id, request.image_file_name, model_name, version,
                                   request.job_id, error, held)
            return await self._deliver(result, request.result_key, destination)
        sample = classification.results[0]
        if not isinstance(sample, Classified) and sample.error.status >= 500:
            return Retry(f"{sample.error.code}: {sample.error.message}")  # the batch failed, not the image
        recorder.record(caller, route, classification, _latency_ms(request, held))
        if isinstance(sample, Classified):
            result = _classified_result(request, model_name, version, sample, held)
        else:
            result = _error_result(request.image_id, request.request_id, request.image_file_name, model_name, version,
                                   request.job_id, sample.error, held)
        return await self._deliver(result, request.result_key, destination)

    async def _read_image(self, request: RequestMessage) -> ImageInput:
        where = f"s3://{request.image_bucket}/{request.image_key}"
        limit = self.config.max_image_bytes
        if request.image_data is not None:  # it came with the message: no object to read
            if len(request.image_data) > limit:
                raise PayloadTooLarge(f"the image in the message for {where} is {len(request.image_data)} bytes, "
                                      f"more than the {limit} this worker reads")
            return ImageInput(request.image_data, request.image_file_name, _image_type(request.image_content_type))
        try:
            stored = await retrying(lambda: self.aws.objects.get(request.image_bucket, request.image_key, limit),
                                    f"reading {where}", log, self.keep_trying)
        except ClientError as exc:
            if is_missing(exc):
                raise ImageNotFound(f"no image at {where}") from None
            raise
        if stored.size > limit:
            raise PayloadTooLarge(f"the image at {where} is {stored.size} bytes, more than the {limit} this worker "
                                  "reads")
        return ImageInput(stored.data, request.image_file_name, _image_type(stored.content_type))

    async def _answer_malformed(self, held: HeldMessage, exc: MalformedMessage) -> Outcome:
        """Answered on NAME-responses (or the reply queue it names, when that is valid), and stored
        when it carries a usable image id; recorded as one event without an image."""
        salvage = exc.salvage
        log.warning("message %s is malformed: %s", held.message_id, exc.message)
        image_id, job_id, model = salvage.get("image_id"), salvage.get("job_id"), salvage.get("model")
        request_id = salvage.get("request_id") or held.message_id
        error = describe(exc)
        recorder = self.ledger.recorder(event_id(image_id or held.message_id), held.sent_at)
        route = ROUTE_JOBS if job_id else ROUTE_SYNC
        recorder.record_refused(Caller(request_id, "anonymous", None, None), route, error, _worker_ms(held), model)
        result = _error_result(image_id or held.message_id, request_id, salvage.get("image_file_name"), model, None,
                               job_id, error, held)
        try:
            try:
                destination = await self.responder.destination(salvage.get("reply_to"))
            except InvalidReplyQueue:
                destination = self.responder.responses_url
            return await self._deliver(result, result_key(job_id, image_id) if image_id else None, destination)
        except GaveUp as gave_up:
            return Retry(f"S3 or SQS stayed unavailable until shutdown: {gave_up}", delay_s=0)

    async def _deliver(self, result: Result, key: str | None, destination: str | None) -> Outcome:
        """Store the result object and answer; the event was recorded just before. A synchronous
        request's client waits for the answer, not the object, so the answer goes out first and the
        object at the same time; a job's answer follows its object, so whoever reads the answer
        finds the object too. Either way the message is deleted only once both are done."""
        event_number = self.ledger.put_total
        body = encode(result)
        store = None if key is None else functools.partial(self._store, key, body)
        if store is not None and (result.job_id is not None or destination is None):
            await store()
            store = None
        if destination is None:
            log.info("the reply queue of request %s is gone; its result is stored only", result.request_id)
            return Answered(event_number)
        answer = self.responder.enqueue(destination, body.decode())
        stored = None if store is None else asyncio.ensure_future(store())
        try:
            await answer
        except ReplyQueueGone:
            log.info("the reply queue of request %s is gone; its result is stored only", result.request_id)
        except GaveUp:
            if stored is not None:
                stored.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - not answered: the message is delivered again
            if stored is not None:
                stored.cancel()
            return Retry(f"the response could not be sent: {exc}")
        if stored is not None:
            await stored  # fails as a store before the answer would: the message is delivered again
        return Answered(event_number)

    async def _store(self, key: str, body: bytes) -> None:
        await retrying(lambda: self.aws.objects.put(self.names.output_bucket, key, body, "application/json"),
                       f"writing s3://{self.names.output_bucket}/{key}", log, self.keep_trying)


def _image_type(content_type: str | None) -> str | None:
    """A declared type the decoder may check the bytes against; anything else is left to sniffing."""
    return content_type if content_type is not None and content_type.startswith("image/") else None


def _worker_ms(held: HeldMessage) -> float:
    return (time.monotonic() - held.received) * 1000.0


def _latency_ms(request: RequestMessage, held: HeldMessage) -> float:
    """As the client sees it: from the web tier's receipt of the request, when the message says."""
    if request.received_at is None:
        return _worker_ms(held)
    return max(0.0, (datetime.now(UTC) - request.received_at).total_seconds() * 1000.0)


def _classified_result(request: RequestMessage, model: str | None, version: int | None, sample: Classified,
                       held: HeldMessage) -> Result:
    predictions = [Prediction(p.class_id, p.label, p.score) for p in sample.predictions]
    cache: str | msgspec.UnsetType = "hit" if sample.cached is not None else msgspec.UNSET
    fallback_for: str | msgspec.UnsetType = msgspec.UNSET
    if sample.stand_in is not None:  # the model's fallback answered: the result names it
        model, version = sample.stand_in.name, sample.stand_in.version
        fallback_for = sample.stand_in.primary
    return Result(
        image_id=request.image_id, request_id=request.request_id, image_file_name=request.image_file_name,
        prediction_value=predictions[0].label, predictions=predictions, model=model, model_version=version,
        job_id=request.job_id, timing_ms=Timing(round(sample.queue_ms, 3), round(sample.inference_ms, 3),
                                                round(_worker_ms(held), 3)),
        batch_size=sample.batch_size, cache=cache, fallback_for=fallback_for,
    )


def _error_result(image_id: str, request_id: str, file_name: str | None, model: str | None, version: int | None,
                  job_id: str | None, error: ErrorInfo, held: HeldMessage) -> Result:
    return Result(
        image_id=image_id, request_id=request_id, image_file_name=file_name, prediction_value=None,
        error=ErrorBody(error.code, error.message), model=model, model_version=version, job_id=job_id,
        timing_ms=Timing(0.0, 0.0, round(_worker_ms(held), 3)),
    )
