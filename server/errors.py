"""Every error a client can see, and the one place that turns exceptions into HTTP answers.

Handlers raise typed exceptions (ours, the batcher's, the model repository's, Litestar's);
`describe` maps each to (status, code, message, headers) and `render` shapes the body for the
route family: `{"error": {"code", "message"}}` on v1 and the UI, `{"error": "message"}` on V2.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import ClientException

from batchserve.batching.errors import BatcherClosed, DeadlineExceeded, QueueFull
from batchserve.events.errors import InvalidStatsQuery, StoreError
from batchserve.model_repo.errors import (
    ImageDecodeError,
    ImageTooLarge,
    ModelLoadError,
    ModelNotFound,
    UnsupportedImageType,
)
from batchserve.server.request_context import request_id_of

log = logging.getLogger("batchserve.errors")


class ServeError(Exception):
    """Base for errors the server raises itself; subclasses fix the status and code."""

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


class Draining(ServeError):
    status, code = 503, "draining"


class Unauthorized(ServeError):
    status, code = 401, "unauthorized"


class Forbidden(ServeError):
    status, code = 403, "forbidden"


class Conflict(ServeError):
    status, code = 409, "conflict"


class ModelNotReady(ServeError):
    status, code = 503, "model_not_ready"


@dataclass(frozen=True)
class ErrorInfo:
    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)


class ErrorAnswer(ServeError):
    """Re-raises an error already described earlier (one image of a request) through the mapper."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message, headers=info.headers)
        self.status, self.code = info.status, info.code


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def describe(exc: BaseException) -> ErrorInfo:
    """The HTTP meaning of an exception. Unknown exceptions are bugs: 500, logged by the caller."""
    match exc:
        case ServeError():
            return ErrorInfo(exc.status, exc.code, exc.message, exc.headers)
        case QueueFull():
            return ErrorInfo(503, "queue_full", str(exc), _retry_after(exc.retry_after_s))
        case BatcherClosed():
            return ErrorInfo(503, "draining", "the server is shutting down; retry on another instance", _retry_after(1))
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
            return ErrorInfo(503, "events_unavailable", f"the event store is unavailable: {exc}", _retry_after(5))
        case ModelLoadError():
            return ErrorInfo(503, "model_not_ready", str(exc))
        case NotFoundException():
            return ErrorInfo(404, "not_found", exc.detail or "no such route")
        case MethodNotAllowedException():
            return ErrorInfo(405, "method_not_allowed", exc.detail or "method not allowed", dict(exc.headers or {}))
        case ValidationException():
            return ErrorInfo(422, "invalid_parameter", _validation_message(exc))
        case HTTPException() if exc.status_code == 413:
            return ErrorInfo(413, "payload_too_large", "request body exceeds the size limit")
        case HTTPException() if 400 <= exc.status_code < 500:
            return ErrorInfo(exc.status_code, "invalid_request", exc.detail or "bad request", dict(exc.headers or {}))
        case _:
            return ErrorInfo(500, "internal", "internal server error")


def _validation_message(exc: ValidationException) -> str:
    details = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in details:
        if isinstance(item, dict):
            key = item.get("key") or item.get("source") or "parameter"
            parts.append(f"{key}: {item.get('message', 'invalid value')}")
    return "; ".join(parts) or (exc.detail or "invalid parameter")


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def render(info: ErrorInfo, path: str, request_id: str | None = None) -> Response:
    body: dict[str, object]
    if is_v2(path):
        body = {"error": info.message}
    else:
        body = {"error": {"code": info.code, "message": info.message}}
    headers = dict(info.headers)
    if request_id:
        headers["X-Request-ID"] = request_id
    return Response(content=body, status_code=info.status, headers=headers, media_type="application/json")


def exception_handler(request: Request, exc: Exception) -> Response:
    """Registered for Exception: Litestar's own 404/405/validation answers come through here too."""
    info = describe(exc)
    if info.status >= 500 and info.code == "internal":
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    elif isinstance(exc, ClientException) and info.code == "invalid_request":
        log.debug("client error on %s: %s", request.url.path, exc)
    return render(info, request.url.path, request_id_of(request.scope))
