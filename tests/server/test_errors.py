"""One meaning per error: every typed error has one status and code, rendered per route family."""

import pytest
from litestar.exceptions import MethodNotAllowedException, NotFoundException, ValidationException

from batchserve.batching.errors import BatcherClosed, DeadlineExceeded, QueueFull
from batchserve.events.errors import InvalidStatsQuery, StoreUnavailable
from batchserve.model_repo.errors import ImageDecodeError, ImageTooLarge, ModelNotFound, UnsupportedImageType
from batchserve.server.errors import describe, v1_body, v2_body
from batchserve.serving.errors import (
    Draining,
    InvalidParameter,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ImageDecodeError("not an image"), 400, "invalid_image"),
        (ImageTooLarge(100000, 100000, 40_000_000), 413, "payload_too_large"),
        (UnsupportedImageType("svg"), 415, "unsupported_media_type"),
        (ModelNotFound("nope", None, ["tiny"]), 404, "model_not_found"),
        (InvalidRequest("bad multipart"), 400, "invalid_request"),
        (InvalidParameter("top_k"), 422, "invalid_parameter"),
        (PayloadTooLarge("big"), 413, "payload_too_large"),
        (UnsupportedMediaType("text/plain"), 415, "unsupported_media_type"),
        (Draining("bye"), 503, "draining"),
        (DeadlineExceeded(waited_s=0.5), 504, "deadline_exceeded"),
        (BatcherClosed("closed"), 503, "draining"),
        (NotFoundException(), 404, "not_found"),
        (MethodNotAllowedException(), 405, "method_not_allowed"),
        (ValidationException("bad", extra=[{"key": "top_k", "message": "expected int"}]), 422, "invalid_parameter"),
        (InvalidStatsQuery("from is later than to"), 422, "invalid_parameter"),
        (StoreUnavailable("connection refused"), 503, "events_unavailable"),
        (RuntimeError("bug"), 500, "internal"),
    ],
)
def test_each_error_has_one_status_and_code(exc: Exception, status: int, code: str) -> None:
    info = describe(exc)
    assert (info.status, info.code) == (status, code)
    assert info.message


def test_queue_full_carries_retry_after_rounded_up() -> None:
    info = describe(QueueFull(queued=10, requested=1, capacity=10, retry_after_s=2.2))
    assert (info.status, info.code) == (503, "queue_full")
    assert info.headers["Retry-After"] == "3"


def test_internal_errors_do_not_leak_details() -> None:
    assert "secret" not in describe(RuntimeError("secret path /etc/passwd")).message


def test_v1_and_v2_bodies_differ_only_in_shape() -> None:
    info = describe(ImageDecodeError("cannot identify image"))
    assert v1_body(info) == {"error": {"code": "invalid_image", "message": "cannot identify image"}}
    assert v2_body(info) == {"error": "cannot identify image"}
