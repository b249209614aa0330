"""What the API's answers look like (msgspec Structs: fast to encode, and they document /schema),
and how /schema describes the bodies and errors of the routes that take uploads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from batchserve.jobs.job_inputs import MAX_IMAGES_PER_JOB
from batchserve.model_repo.image_formats import accepted_media_types


class PredictionOut(msgspec.Struct):
    class_id: int
    label: str
    score: float


class Timing(msgspec.Struct):
    queue: float
    inference: float
    total: float


class ClassifyResult(msgspec.Struct, omit_defaults=True):
    """One image's answer. `model` is the model that really answered: with `"fallback": true` it is
    the fallback of the model asked for, named in `fallback_for`. `"cache": "hit"` marks an answer
    from the result cache (never decoded nor batched: `batch_size` 0). The three appear only then."""

    request_id: str
    model: str
    model_version: int
    predictions: list[PredictionOut]
    timing_ms: Timing
    batch_size: int
    cache: Literal["hit"] | None = None
    fallback: bool | None = None
    fallback_for: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__struct_fields__}


class ErrorOut(msgspec.Struct):
    code: str
    message: str


class FileOutcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One uploaded file: a result object plus its filename, or its filename and an error.

    One struct with omitted empty fields (rather than a union of two) keeps the OpenAPI schema
    generable and the JSON exactly as documented."""

    filename: str | None
    request_id: str | None = None
    model: str | None = None
    model_version: int | None = None
    predictions: list[PredictionOut] | None = None
    timing_ms: Timing | None = None
    batch_size: int | None = None
    cache: Literal["hit"] | None = None
    fallback: bool | None = None
    fallback_for: str | None = None
    error: ErrorOut | None = None


class MultiClassifyResult(msgspec.Struct):
    request_id: str
    results: list[FileOutcome]


class ErrorResponse(msgspec.Struct):
    """Every error of /v1 and the pages: a stable code and a sentence."""

    error: ErrorOut


class V2ErrorResponse(msgspec.Struct):
    """Every error of /v2, shaped as the Open Inference Protocol says."""

    error: str


ERROR_MEANINGS = {
    400: "invalid_request (malformed request or body) or invalid_image",
    404: "model_not_found",
    413: "payload_too_large: the body, or an image's declared pixels, over the limit",
    415: "unsupported_media_type: not an accepted image format or Content-Type",
    422: "invalid_parameter: a query parameter or header out of range or not a number",
    501: "not_supported: this server's backend does not serve the route (a queue web tier and V2 inference)",
    502: "the queue worker that took the image failed on its side (--backend queue)",
    503: "queue_full, draining, model_not_ready, overloaded or queue_unavailable; Retry-After says when to retry",
    504: "deadline_exceeded: the request's deadline passed before its answer",
}


def error_responses(body: Any, *statuses: int) -> dict[int, ResponseSpec]:
    """/schema entries for the error answers a route gives, all with one body shape."""
    return {
        status: ResponseSpec(data_container=body, description=ERROR_MEANINGS[status], generate_examples=False)
        for status in statuses
    }


def _binary(description: str) -> OpenAPIMediaType:
    schema = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, description=description)
    return OpenAPIMediaType(schema=schema)


def classify_request_body() -> RequestBody:
    """One image as the raw body (its type sniffed from the bytes), or multipart `image` files."""
    content = {media_type: _binary("the encoded image") for media_type in accepted_media_types()}
    content["application/octet-stream"] = _binary("an encoded image; its format is read from its bytes")
    content["multipart/form-data"] = OpenAPIMediaType(schema=Schema(
        type=OpenAPIType.OBJECT,
        required=["image"],
        properties={"image": Schema(
            type=OpenAPIType.ARRAY, min_items=1,
            items=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
            description="one or more image files (at most --max-images-per-request), answered in upload order",
        )},
    ))
    return RequestBody(
        content=content, required=True,
        description="Accepted formats: JPEG, PNG, WebP, GIF (first frame), BMP; see docs/image-formats.md.",
    )


@dataclass
class ClassifyOperation(Operation):
    """/v1/classify reads its body itself (raw or multipart), so Litestar cannot infer it."""

    def __post_init__(self) -> None:
        self.request_body = classify_request_body()


# ---- /v1/jobs (the queue backend's bulk jobs; docs/jobs.md) ------------------------------------------
class JobLinks(msgspec.Struct, omit_defaults=True):
    self_: str = msgspec.field(name="self")
    next: str | None = None  # the next page, when there is one


class JobAccepted(msgspec.Struct):
    """A job taken: every image is stored and its message sent."""

    job_id: str
    status: str
    images: int
    links: JobLinks


class JobOut(msgspec.Struct):
    """A job's status and one page of its results, in the order its images were given.

    Each entry of `results` is the image's result object as the worker stored it (`predictions`, or
    `error` with `code` and `message`), plus `status` (`done`, `failed` or `pending`: no result yet)
    and where the image was read (`image_bucket`, `image_key`)."""

    job_id: str
    status: str  # queued, running, done, partial, failed or cancelled
    images: int
    done: int
    failed: int
    pending: int
    model: str
    model_version: int
    top_k: int
    created_at: datetime
    offset: int
    limit: int
    results: list[dict[str, Any]]
    links: JobLinks


class JobListed(msgspec.Struct):
    job_id: str
    created_at: datetime
    images: int
    model: str
    model_version: int
    top_k: int
    cancelled: bool
    links: JobLinks


class JobList(msgspec.Struct):
    """The caller's jobs, newest first; `next` is the cursor of the next page (null on the last)."""

    jobs: list[JobListed]
    next: str | None
    links: JobLinks


JOB_ERROR_MEANINGS = {
    400: "invalid_request: a body that is not JSON, or malformed multipart",
    403: "forbidden: an s3:// input outside --allowed-buckets",
    404: "jobs_unavailable (the server does not run --backend queue), job_not_found or model_not_found",
    413: "payload_too_large: more images than a job takes, or a body over the limit",
    415: "unsupported_media_type: neither multipart/form-data nor application/json",
    422: "invalid_parameter: a query parameter, or a JSON body not as documented",
    503: "queue_unavailable, draining or overloaded; Retry-After says when to retry",
}


def job_error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """/schema entries for the errors of the /v1/jobs routes (the /v1 error shape)."""
    return {
        status: ResponseSpec(data_container=ErrorResponse, description=JOB_ERROR_MEANINGS[status],
                             generate_examples=False)
        for status in statuses
    }


def job_request_body() -> RequestBody:
    """Multipart `image` files, or a JSON document naming s3:// objects or a prefix."""
    s3_url = Schema(type=OpenAPIType.STRING, pattern="^s3://", description="s3://BUCKET/KEY")
    return RequestBody(required=True, description="The images of the job: uploaded, or already in S3 "
                       "(in a bucket named by --allowed-buckets).", content={
        "multipart/form-data": OpenAPIMediaType(schema=Schema(
            type=OpenAPIType.OBJECT, required=["image"],
            properties={"image": Schema(type=OpenAPIType.ARRAY, min_items=1,
                                        items=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                                        description="image files (at most --max-images-per-request)")},
        )),
        "application/json": OpenAPIMediaType(schema=Schema(
            type=OpenAPIType.OBJECT,
            properties={
                "images": Schema(type=OpenAPIType.ARRAY, items=s3_url, min_items=1, max_items=MAX_IMAGES_PER_JOB,
                                 description="the objects to classify, in this order"),
                "prefix": Schema(type=OpenAPIType.STRING, pattern="^s3://",
                                 description=f"every object under s3://BUCKET/PREFIX (at most {MAX_IMAGES_PER_JOB})"),
            },
            description="exactly one of images and prefix",
        )),
    })


@dataclass
class JobsOperation(Operation):
    """POST /v1/jobs reads its body itself (multipart or JSON), so Litestar cannot infer it."""

    def __post_init__(self) -> None:
        self.request_body = job_request_body()
