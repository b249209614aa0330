"""The messages between the web tier and the workers, and the result object a worker stores.

A request names one image; the worker's answer is both the response message and the result
object at a key derived from the request alone, so a redelivered request overwrites the same
object and its event keeps the same id. Parsing is strict (types are not coerced) but tolerant of
fields it does not know, so a newer web tier can add some. Anything unparsable becomes a
`MalformedMessage` carrying what could still be read of it, so even a broken message is answered.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from batchserve.jobs.config import INLINE_CEILING_BYTES
from batchserve.jobs.errors import MalformedMessage

# Ids become parts of S3 keys: one path segment of safe characters, so no id can reach another
# job's objects. "job" is the name of a job's manifest (<job_id>/job.json) and "sync" the prefix of
# synchronous results, so neither can be an image or a job id.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
SYNC_PREFIX = "sync"
MANIFEST_STEM = "job"
_ID = re.compile(ID_PATTERN)
# Event ids derive from image ids in this namespace (uuid5), so every delivery of one image is one row.
EVENT_NAMESPACE = uuid.UUID("3c5e0d4a-3a53-4f7e-9f3e-8b9a4c1d2e70")
_TEXT = Annotated[str, msgspec.Meta(max_length=1024)]


class RequestMessage(msgspec.Struct, kw_only=True):
    """One image to classify, as the web tier sends it to NAME-requests (not frozen: parsing normalises
    `received_at` to UTC)."""

    image_id: Id  # made by the web tier, unique per image
    request_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]  # shared by a request's images
    image_bucket: Annotated[str, msgspec.Meta(min_length=3, max_length=63)]
    image_key: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    image_file_name: _TEXT | None = None
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None  # None: the worker's default
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None  # None: the latest loaded
    top_k: Annotated[int, msgspec.Meta(ge=1)] = 5
    job_id: Id | None = None  # None: a synchronous request, answered on `reply_to`
    reply_to: _TEXT | None = None  # queue URL or name; None: NAME-responses
    received_at: datetime | None = None  # when the web tier received the request
    user: _TEXT = "anonymous"  # already a key id, never a key
    client_ip: _TEXT | None = None
    user_agent: _TEXT | None = None
    # A small image travels inside the message too (base64 in the JSON), so the worker reads no
    # object; the copy at image_bucket/image_key stays the record. A worker that does not know these
    # fields reads the object as before.
    image_data: Annotated[bytes, msgspec.Meta(max_length=INLINE_CEILING_BYTES)] | None = None
    image_content_type: _TEXT | None = None

    def __post_init__(self) -> None:
        if self.image_id == MANIFEST_STEM:
            raise ValueError(f"image_id {MANIFEST_STEM!r} is reserved for a job's manifest")
        if self.job_id == SYNC_PREFIX:
            raise ValueError(f"job_id {SYNC_PREFIX!r} is reserved for synchronous results")
        if self.received_at is not None and self.received_at.tzinfo is None:
            self.received_at = self.received_at.replace(tzinfo=UTC)

    @property
    def result_key(self) -> str:
        return result_key(self.job_id, self.image_id)

    @property
    def event_id(self) -> str:
        return event_id(self.image_id)


class Prediction(msgspec.Struct, frozen=True):
    class_id: int
    label: str
    score: float


class Timing(msgspec.Struct, frozen=True):
    """Milliseconds: waiting for a batch, in the model, and from receipt by the worker to the answer."""

    queue: float
    inference: float
    total: float


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """The worker's answer: the response message, and the result object's content.

    `request_id`, `image_file_name` and `prediction_value` (the top class's label) keep the names
    of the system queue mode was specified from. A result holds either `predictions` or `error`;
    the one it does not hold is left out of the JSON."""

    image_id: str | None
    request_id: str | None
    image_file_name: str | None
    prediction_value: str | None
    predictions: list[Prediction] | msgspec.UnsetType = msgspec.UNSET
    error: ErrorBody | msgspec.UnsetType = msgspec.UNSET
    model: str | None
    model_version: int | None
    job_id: str | None
    timing_ms: Timing | None
    batch_size: int | None = None
    # Present only when they apply: "hit" for an answer from the worker's result cache; the model
    # asked for when its fallback answered (then `model` names the fallback).
    cache: str | msgspec.UnsetType = msgspec.UNSET
    fallback_for: str | msgspec.UnsetType = msgspec.UNSET

    @property
    def failed(self) -> bool:
        return not isinstance(self.error, msgspec.UnsetType)


def result_key(job_id: str | None, image_id: str) -> str:
    """Where an image's result object lives in the output bucket: <job_id or "sync">/<image_id>.json."""
    return f"{job_id or SYNC_PREFIX}/{image_id}.json"


def event_id(image_id: str) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, image_id))


_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(RequestMessage)
_any_decoder = msgspec.json.Decoder()
_result_decoder = msgspec.json.Decoder(Result)


def encode(message: RequestMessage | Result) -> bytes:
    return _encoder.encode(message)


def decode_result(body: bytes | str) -> Result:
    return _result_decoder.decode(body)


def parse_request(body: bytes | str) -> RequestMessage:
    """The request in a message body; a body that is not one raises MalformedMessage."""
    try:
        return _request_decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise MalformedMessage(_problem(exc), _salvage(body)) from None


def _problem(exc: msgspec.DecodeError) -> str:
    if isinstance(exc, msgspec.ValidationError):
        return f"the request message is invalid: {exc}"
    return "the request message is not a JSON object"


def _salvage(body: bytes | str) -> dict[str, str]:
    """The string fields of a malformed request that can still direct its answer."""
    try:
        raw: Any = _any_decoder.decode(body)
    except msgspec.DecodeError:
        return {}
    if not isinstance(raw, dict):
        return {}
    kept = {name: value for name in ("image_id", "request_id", "image_file_name", "model", "job_id", "reply_to")
            if isinstance(value := raw.get(name), str) and len(value) <= 1024}
    for name in ("image_id", "job_id"):  # they would form a result key: only safe ones are kept
        if name in kept and not _ID.match(kept[name]):
            del kept[name]
    if kept.get("image_id") == MANIFEST_STEM:
        del kept["image_id"]
    if kept.get("job_id") == SYNC_PREFIX:
        del kept["job_id"]
    return kept
