"""A job's progress, computed from its manifest and the result objects workers stored.

Every input of the manifest is in one of three states: answered (its result object exists: done,
or failed when the result holds an error), lost (never sent, or its job was cancelled before it
ran: failed, with a result made up here, since no worker will write one), or pending. The job's
status follows:

- `cancelled`: the owner cancelled it (or its submission failed midway); nothing is pending any more.
- `queued`: nothing answered yet; `running`: some answered, some pending;
- once nothing is pending: `done` (no failure), `failed` (no success), else `partial`.

An image that was already being classified when its job was cancelled may still finish: its
result then replaces the made-up `cancelled` one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from batchserve.jobs.job_manifest import CANCELLED, JobInput, JobManifest
from batchserve.jobs.messages import decode_result

QUEUED, RUNNING, DONE, PARTIAL, FAILED = "queued", "running", "done", "partial", "failed"
PENDING = "pending"
NOT_SENT = {"code": "not_sent",
            "message": "the image was never sent to the workers: S3 or SQS failed while the job was submitted"}
CANCELLED_ERROR = {"code": "cancelled", "message": "the job was cancelled before this image ran"}
UNREADABLE = {"code": "invalid_answer", "message": "the stored result of this image is not a result object"}

_any = msgspec.json.Decoder()


@dataclass(frozen=True)
class StoredResult:
    """A result object as read from the output bucket (`etag` tells whether it changed since)."""

    etag: str
    failed: bool
    body: bytes  # the JSON as stored: decoded only when a page shows it

    @classmethod
    def parse(cls, etag: str, body: bytes) -> StoredResult:
        try:
            return cls(etag, decode_result(body).failed, body)
        except msgspec.DecodeError:
            return cls(etag, True, b"")


@dataclass(frozen=True)
class JobProgress:
    status: str
    done: int
    failed: int
    pending: int


def progress(manifest: JobManifest, results: Mapping[str, StoredResult]) -> JobProgress:
    cancelled = manifest.status == CANCELLED
    unsent = set(manifest.unsent)
    done = failed = answered = 0
    for item in manifest.inputs:
        stored = results.get(item.image_id)
        if stored is not None:
            answered += 1
            if stored.failed:
                failed += 1
            else:
                done += 1
        elif cancelled or item.image_id in unsent:
            failed += 1
    pending = manifest.images - done - failed
    status: str
    if cancelled:
        status = CANCELLED
    elif pending == 0:
        status = DONE if failed == 0 else FAILED if done == 0 else PARTIAL
    else:
        status = QUEUED if answered == 0 else RUNNING
    return JobProgress(status, done, failed, pending)


def page(manifest: JobManifest, results: Mapping[str, StoredResult], offset: int, limit: int) -> list[dict[str, Any]]:
    """The entries of inputs offset..offset+limit, in manifest order."""
    unsent = set(manifest.unsent)
    return [_entry(manifest, item, results.get(item.image_id), item.image_id in unsent)
            for item in manifest.inputs[offset:offset + limit]]


def _entry(manifest: JobManifest, item: JobInput, stored: StoredResult | None, unsent: bool) -> dict[str, Any]:
    where = {"image_bucket": item.bucket, "image_key": item.key}
    if stored is not None:
        body: Any = _any.decode(stored.body) if stored.body else None
        if not isinstance(body, dict):
            body = _made_up(manifest, item, UNREADABLE)
        return {**body, "status": FAILED if stored.failed else DONE, **where}
    if unsent:
        return {**_made_up(manifest, item, NOT_SENT), "status": FAILED, **where}
    if manifest.status == CANCELLED:
        return {**_made_up(manifest, item, CANCELLED_ERROR), "status": FAILED, **where}
    return {"image_id": item.image_id, "image_file_name": item.image_file_name, "job_id": manifest.job_id,
            "status": PENDING, **where}


def _made_up(manifest: JobManifest, item: JobInput, error: dict[str, str]) -> dict[str, Any]:
    """An error result, shaped as a worker's, for an image no worker will answer."""
    return {"image_id": item.image_id, "request_id": manifest.request_id, "image_file_name": item.image_file_name,
            "prediction_value": None, "error": dict(error), "model": manifest.model,
            "model_version": manifest.version, "job_id": manifest.job_id, "timing_ms": None}
