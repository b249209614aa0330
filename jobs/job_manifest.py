"""A job's manifest and the owner index, as stored in the output bucket.

- `<job_id>/job.json`: the manifest (who owns the job, the model, and every input in order). It is
  written before any message is sent, so every result a worker stores belongs to a known job. Its
  state ("open" or "cancelled") is also the object's metadata `x-amz-meta-job-status`, written in
  the same PUT, so a worker learns it with a HEAD instead of reading a manifest of 10 000 inputs.
- `_index/<owner hash>/<inverted time>-<job_id>`: one small object per job, holding its summary.
  Listing an owner's prefix gives their jobs newest first (keys sort ascending, the time is
  inverted) without reading a manifest. `_` cannot start an id (see messages.ID_PATTERN), so the
  index can never collide with a job's `<job_id>/` prefix or with `sync/`. The owner is hashed: a
  key name is safe in a key, but a hash is safe whatever names users get in the future.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Literal

import msgspec

from batchserve.jobs.messages import ID_PATTERN, MANIFEST_STEM, SYNC_PREFIX, Id

JobState = Literal["open", "cancelled"]
OPEN: JobState = "open"
CANCELLED: JobState = "cancelled"
STATUS_METADATA = "job-status"  # S3 user metadata of the manifest object: x-amz-meta-job-status
INDEX_PREFIX = "_index"
# Index keys hold this minus the creation time in milliseconds, zero-padded: newest first.
_TIME_CEILING_MS = 10**13 - 1
_ID = re.compile(ID_PATTERN)
_CURSOR = re.compile(r"^[0-9]{13}-" + ID_PATTERN[1:])


class JobInput(msgspec.Struct, frozen=True, kw_only=True):
    """One image of a job: where it is, and the name its result carries."""

    image_id: Id
    image_file_name: str | None
    bucket: str
    key: str


class JobManifest(msgspec.Struct, kw_only=True):
    job_id: Id
    owner: str  # the caller's user id (a key's name, or an id derived from a key), never a key
    created_at: datetime
    request_id: str  # of the POST that created the job; every message of the job carries it
    model: str
    version: int
    top_k: int
    status: JobState = OPEN
    images: int
    inputs: list[JobInput]
    # Inputs whose message could not be sent (S3 or SQS failed while the job was submitted).
    unsent: list[str] = msgspec.field(default_factory=list)

    def summary(self) -> JobSummary:
        return JobSummary(job_id=self.job_id, created_at=self.created_at, images=self.images, model=self.model,
                          version=self.version, top_k=self.top_k, status=self.status)


class JobSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What the owner index holds of a job: enough to list it."""

    job_id: str
    created_at: datetime
    images: int
    model: str
    version: int
    top_k: int
    status: JobState


_manifest_decoder = msgspec.json.Decoder(JobManifest)
_summary_decoder = msgspec.json.Decoder(JobSummary)
_encoder = msgspec.json.Encoder()


def encode(value: JobManifest | JobSummary) -> bytes:
    return _encoder.encode(value)


def decode_manifest(body: bytes) -> JobManifest:
    return _manifest_decoder.decode(body)


def decode_summary(body: bytes) -> JobSummary:
    return _summary_decoder.decode(body)


def new_job_id() -> str:
    return uuid.uuid4().hex


def new_image_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    """Whether `text` can name a job at all (checked before any S3 call)."""
    return bool(_ID.match(text)) and text != SYNC_PREFIX


def manifest_key(job_id: str) -> str:
    return f"{job_id}/{MANIFEST_STEM}.json"


def results_prefix(job_id: str) -> str:
    return f"{job_id}/"


def image_id_of(result_key: str, job_id: str) -> str | None:
    """The image id of a result object's key under `<job_id>/`, or None for the manifest and strays."""
    name = result_key[len(results_prefix(job_id)):]
    if not name.endswith(".json") or "/" in name:
        return None
    stem = name[:-len(".json")]
    return stem if stem != MANIFEST_STEM and _ID.match(stem) else None


def owner_prefix(owner: str) -> str:
    return f"{INDEX_PREFIX}/{hashlib.sha256(owner.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}/"


def index_entry(created_at: datetime, job_id: str) -> str:
    """The part of an index key after the owner's prefix; also the listing's cursor."""
    millis = int(created_at.astimezone(UTC).timestamp() * 1000)
    return f"{_TIME_CEILING_MS - millis:013d}-{job_id}"


def index_key(owner: str, created_at: datetime, job_id: str) -> str:
    return owner_prefix(owner) + index_entry(created_at, job_id)


def is_cursor(text: str) -> bool:
    return bool(_CURSOR.match(text))


def now() -> datetime:
    return datetime.now(UTC)
