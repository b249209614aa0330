"""Errors as HTTP answers: each route family renders its own body shape, from one meaning per error.

`describe` extends the serving core's mapping with Litestar's own exceptions (404, 405,
validation, body too large). Each route family registers its handler on its controller
(Litestar's layered exception handlers): `{"error": {"code", "message"}}` on /v1 and the pages,
`{"error": "message"}` on /v2 as the Open Inference Protocol says. Errors raised before routing
(an unmatched path, a method the path does not take, ASGI middleware) reach the app-level fallback,
which picks the shape by path, since no route claimed the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import ClientException
from litestar.types import ExceptionHandlersMap

from batchserve.server.request_context import request_id_of
from batchserve.serving.errors import ErrorInfo
from batchserve.serving.errors import describe as describe_serving_error

log = logging.getLogger("batchserve.errors")

V2_PREFIX = "/v2"
BODY_OVER_LIMIT = "request body exceeds the size limit"


def describe(exc: BaseException) -> ErrorInfo:
    """The HTTP meaning of an exception: the serving core's errors, then the framework's."""
    match exc:
        case NotFoundException():
            return ErrorInfo(404, "not_found", exc.detail or "no such route")
        case MethodNotAllowedException():
            return ErrorInfo(405, "method_not_allowed", exc.detail or "method not allowed", dict(exc.headers or {}))
        case ValidationException():
            return ErrorInfo(422, "invalid_parameter", _validation_message(exc))
        case HTTPException() if exc.status_code == 413:
            return ErrorInfo(413, "payload_too_large", BODY_OVER_LIMIT)
        case HTTPException() if 400 <= exc.status_code < 500:
            return ErrorInfo(exc.status_code, "invalid_request", exc.detail or "bad request", dict(exc.headers or {}))
        case _:
            return describe_serving_error(exc)


def _validation_message(exc: ValidationException) -> str:
    details = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for item in details:
        if isinstance(item, dict):
            key = item.get("key") or item.get("source") or "parameter"
            parts.append(f"{key}: {item.get('message', 'invalid value')}")
    return "; ".join(parts) or (exc.detail or "invalid parameter")


def v1_body(info: ErrorInfo) -> dict[str, object]:
    return {"error": {"code": info.code, "message": info.message}}


def v2_body(info: ErrorInfo) -> dict[str, object]:
    return {"error": info.message}


def note_error(method: str, path: str, exc: Exception, info: ErrorInfo) -> None:
    """Logs what an error answer alone would not tell: a bug, with its traceback."""
    if info.is_bug:
        log.exception("unhandled error on %s %s", method, path, exc_info=exc)
    elif isinstance(exc, ClientException) and info.code == "invalid_request":
        log.debug("client error on %s: %s", path, exc)


def _answer(request: Request, exc: Exception, body: Callable[[ErrorInfo], dict[str, object]]) -> Response:
    info = describe(exc)
    note_error(request.method, request.url.path, exc, info)
    headers = {**info.headers, "X-Request-ID": request_id_of(request.scope)}
    return Response(content=body(info), status_code=info.status, headers=headers, media_type="application/json")


def v1_exception_handler(request: Request, exc: Exception) -> Response:
    """The REST API and the pages."""
    return _answer(request, exc, v1_body)


def v2_exception_handler(request: Request, exc: Exception) -> Response:
    """The Open Inference Protocol routes."""
    return _answer(request, exc, v2_body)


def fallback_exception_handler(request: Request, exc: Exception) -> Response:
    """Errors no route family claimed: before routing, or in middleware."""
    path = request.url.path
    in_v2 = path == V2_PREFIX or path.startswith(V2_PREFIX + "/")
    return _answer(request, exc, v2_body if in_v2 else v1_body)


V1_HANDLERS: ExceptionHandlersMap = {Exception: v1_exception_handler}
V2_HANDLERS: ExceptionHandlersMap = {Exception: v2_exception_handler}
