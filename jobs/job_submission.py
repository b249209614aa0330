"""Submitting a job: its manifest first, then one request message per image (uploads stored first).

Messages go out through the queue backend's sender, which batches them ten per SendMessageBatch
call; at most SEND_CONCURRENCY images are in flight at once, so a job of 10 000 images neither
opens 10 000 uploads nor waits on them one by one.

When S3 or SQS fails midway, what is not sent yet is not tried any more: the job is cancelled
(what was sent is answered `cancelled` by the workers, unless it already ran), the images never
sent are listed in the manifest (reported as failed, `not_sent`), and the client is answered 503
`queue_unavailable`, so it submits again. If even that manifest update fails, the job stays as
first written; its owner can still cancel it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from batchserve.jobs.job_manifest import CANCELLED, JobInput, JobManifest
from batchserve.jobs.job_store import JobStore, storage_failure
from batchserve.jobs.request_builder import request_message
from batchserve.jobs.web_tier import QueueBackend, unavailable
from batchserve.serving.errors import ErrorAnswer
from batchserve.serving.recording import Caller
from batchserve.serving.registry import LoadedModel

log = logging.getLogger("batchserve.jobs")

SEND_CONCURRENCY = 64
UPLOAD_PREFIX = "jobs"


@dataclass(frozen=True)
class PlannedImage:
    """An input of a job, with its bytes when it was uploaded (None: it is already in S3)."""

    input: JobInput
    data: bytes | None = None
    content_type: str | None = None


def upload_key(job_id: str, image_id: str) -> str:
    return f"{UPLOAD_PREFIX}/{job_id}/{image_id}"


async def submit_job(backend: QueueBackend, store: JobStore, manifest: JobManifest, planned: Sequence[PlannedImage],
                     model: LoadedModel, caller: Caller) -> None:
    """Store the manifest, then send every image. Raises ErrorAnswer(503 queue_unavailable) when
    S3 or SQS failed, having cancelled the job when any of it was stored."""
    try:
        await store.save(manifest)
    except Exception as exc:
        if not storage_failure(exc):
            raise
        raise ErrorAnswer(unavailable("storing the job's manifest", exc)) from exc
    unsent = await _send_all(backend, manifest, planned, model, caller)
    if not unsent:
        return
    log.warning("job %s: %d of %d images could not be sent; the job is cancelled", manifest.job_id, len(unsent),
                manifest.images)
    manifest.status, manifest.unsent = CANCELLED, unsent
    try:
        await store.save(manifest)
    except Exception as exc:  # noqa: BLE001 - the client is told 503 either way
        log.warning("job %s: could not record what was not sent (%s)", manifest.job_id, exc)
    raise ErrorAnswer(unavailable(f"sending the messages of job {manifest.job_id}, which is cancelled; "
                                  "submit it again"))


async def _send_all(backend: QueueBackend, manifest: JobManifest, planned: Sequence[PlannedImage],
                    model: LoadedModel, caller: Caller) -> list[str]:
    """Sends each image's message; returns the image ids not sent (once one fails, the rest are not tried)."""
    limit = asyncio.Semaphore(SEND_CONCURRENCY)
    failed = asyncio.Event()

    async def send(image: PlannedImage) -> str | None:
        item = image.input
        async with limit:
            if failed.is_set():
                return item.image_id
            message = request_message(image_id=item.image_id, bucket=item.bucket, key=item.key,
                                      file_name=item.image_file_name, model=model, top_k=manifest.top_k,
                                      caller=caller, job_id=manifest.job_id)
            try:
                await backend.submit(message, image.data, image.content_type)
            except Exception as exc:  # any failure leaves the image unsent, and stops the rest
                if not failed.is_set():
                    storage = storage_failure(exc)
                    log.log(logging.WARNING if storage else logging.ERROR, "job %s: sending image %s failed: %s",
                            manifest.job_id, item.image_id, exc, exc_info=None if storage else exc)
                failed.set()
                return item.image_id
            return None

    outcomes = await asyncio.gather(*(send(image) for image in planned))
    return [image_id for image_id in outcomes if image_id is not None]
