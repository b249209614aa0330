"""Every error a client can be told about, as (status, code, message, headers), whatever the front end.

The serving core raises typed exceptions (ours, the batcher's, the model repository's, the event
store's); `describe` gives each its meaning once. The HTTP server renders that meaning per route
family and adds the errors of its own framework; a queue worker writes the same code and message
into a result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from batchserve.batching.errors import BatcherClosed, DeadlineExceeded, QueueFull
from batchserve.events.errors import InvalidStatsQuery, StoreError
from batchserve.model_repo.errors import (
    ImageDecodeError,
    ImageTooLarge,
    ModelLoadError,
    ModelNotFound,
    UnsupportedImageType,
)

INTERNAL = "internal"


@dataclass(frozen=True)
class ErrorInfo:
    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def is_bug(self) -> bool:
        """An error nobody anticipated: always logged with its traceback."""
        return self.code == INTERNAL


class ServeError(Exception):
    """Base for errors raised by batchserve itself; subclasses fix the status and code."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRequest(ServeError):
    status, code = 400, "invalid_request"


class InvalidParameter(ServeError):
    status, code = 422, "invalid_parameter"


class PayloadTooLarge(ServeError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServeError):
    status, code = 415, "unsupported_media_type"


class Unauthorized(ServeError):
    status, code = 401, "unauthorized"


class Forbidden(ServeError):
    status, code = 403, "forbidden"


class RateLimited(ServeError):
    """The key spent its request budget; `Retry-After` says when a token is back."""

    status, code = 429, "rate_limited"


class Overloaded(ServeError):
    """Admission refused before any work was done on the request (its body is not even read)."""

    status, code = 503, "overloaded"


class RequestTimeout(ServeError):
    """The client did not send its whole body within the server's body-read deadline."""

    status, code = 408, "request_timeout"


class Draining(ServeError):
    status, code = 503, "draining"


class ModelNotReady(ServeError):
    status, code = 503, "model_not_ready"


class ErrorAnswer(ServeError):
    """Raises an error described earlier (one image of a request) so it is answered as such."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message, headers=info.headers)
        self.status, self.code = info.status, info.code


# The status of each code a queue worker writes into a result, for the front end that answers from
# it. What the worker did not foresee (a bug of its own, a dead-lettered message) is the web tier's
# 502: the service behind it failed, not the request.
STATUS_OF_CODE = {
    "invalid_request": 400, "invalid_image": 400, "invalid_parameter": 422, "payload_too_large": 413,
    "unsupported_media_type": 415, "model_not_found": 404, "image_not_found": 404, "deadline_exceeded": 504,
    "queue_full": 503, "draining": 503, "model_not_ready": 503, "overloaded": 503,
}
UPSTREAM_FAILURE_STATUS = 502


def status_of(code: str) -> int:
    return STATUS_OF_CODE.get(code, UPSTREAM_FAILURE_STATUS)


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def describe(exc: BaseException) -> ErrorInfo:
    """The meaning of an exception. Unknown exceptions are bugs: 500 `internal`, logged by the caller."""
    match exc:
        case ServeError():
            return ErrorInfo(exc.status, exc.code, exc.message, exc.headers)
        case QueueFull():
            return ErrorInfo(503, "queue_full", str(exc), retry_after(exc.retry_after_s))
        case BatcherClosed():
            return ErrorInfo(503, "draining", "the server is shutting down; retry on another instance", retry_after(1))
        case DeadlineExceeded():
            return ErrorInfo(504, "deadline_exceeded", str(exc))
        case ImageTooLarge():
            return ErrorInfo(413, "payload_too_large", str(exc))
        case ImageDecodeError():
            return ErrorInfo(400, "invalid_image", str(exc))
        case UnsupportedImageType():
            return ErrorInfo(415, "unsupported_media_type", str(exc))
        case ModelNotFound():
            return ErrorInfo(404, "model_not_found", str(exc))
        case InvalidStatsQuery():
            return ErrorInfo(422, "invalid_parameter", str(exc))
        case StoreError():
            return ErrorInfo(503, "events_unavailable", f"the event store is unavailable: {exc}", retry_after(5))
        case ModelLoadError():
            return ErrorInfo(503, "model_not_ready", str(exc))
        case _:
            return ErrorInfo(500, INTERNAL, "internal server error")
