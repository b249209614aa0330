"""What the API's answers look like (msgspec Structs: fast to encode, and they document /schema),
and how /schema describes the bodies and errors of the routes that take uploads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from batchserve.model_repo.image_formats import accepted_media_types


class PredictionOut(msgspec.Struct):
    class_id: int
    label: str
    score: float


class Timing(msgspec.Struct):
    queue: float
    inference: float
    total: float


class ClassifyResult(msgspec.Struct):
    request_id: str
    model: str
    model_version: int
    predictions: list[PredictionOut]
    timing_ms: Timing
    batch_size: int

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
    503: "queue_full, draining or model_not_ready; Retry-After says when to retry",
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
