"""`POST /v1/classify` with one raw image, answered without Litestar's routing and the chain of
ASGI wrappers around it.

It is the route nearly every request takes, and the one whose fixed cost per request bounds a
server's throughput and a web tier's CPU per forwarded image. Through the general path a request
passes five wrappers (request id, lease scope, HTTP metrics, auth, admission), each with its own
coroutine and its own `send` wrapper, then Litestar's routing, parameter parsing, request and
response objects (cost measured: docs/remote-backend.md). This path takes the same steps, in the
same order and through the same code (`AuthGuard.check`, `Admission`, `v1_classify.classify`,
`Metrics.observe_answer`), in one coroutine, and sends its answer as one `http.response.start`
and one `http.response.body`: same status, headers, body, events and metrics as the route.

It takes a request only when its answer cannot differ from the route's: POST to exactly
`/v1/classify`, a Content-Type that is not multipart, at most one Content-Type and one
X-Request-Timeout-Ms header, and none of the route's query parameters given twice (Litestar reads
the last of repeated values, admission the first: the general path keeps that as it is).
Anything else goes on to the general path untouched.
"""

from __future__ import annotations

import time
import urllib.parse
from functools import lru_cache
from typing import NamedTuple

import msgspec
from litestar._multipart import parse_content_header  # what Litestar's Request.content_type reads with
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from batchserve.server.admission import Admission
from batchserve.server.auth.guard import AuthGuard
from batchserve.server.door import CACHED_TEXT_BYTES, V1_CLASSIFY, classify_route
from batchserve.server.errors import BODY_OVER_LIMIT, describe, note_error, v1_body
from batchserve.server.metrics import Metrics
from batchserve.server.request_context import request_id_of
from batchserve.server.request_input import CLIENT_LEFT, MULTIPART, raw_image
from batchserve.server.state import AppState
from batchserve.server.v1_classify import ClassifyParams, classify
from batchserve.serving.classifier import ImageInput
from batchserve.serving.errors import InvalidRequest, PayloadTooLarge
from batchserve.serving.leases import lease_scope
from batchserve.serving.logs import current_request_id

Headers = list[tuple[bytes, bytes]]
_PARAMETERS = ("model", "version", "top_k", "timeout_ms")
_JSON = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode  # what Litestar renders the route's answers with


class RawClassify(NamedTuple):
    """A request the fast path takes: its parameters and its body's media type (lower case)."""

    params: ClassifyParams
    media_type: str


def raw_classify(scope: Scope) -> RawClassify | None:
    """The request as the fast path takes it, or None when it belongs to the general path."""
    content_type = timeout = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            if content_type is not None:
                return None
            content_type = value
        elif name == b"x-request-timeout-ms":
            if timeout is not None:
                return None
            timeout = value
    content_type = content_type or b""
    if len(content_type) <= CACHED_TEXT_BYTES:
        media_type = _media_type(content_type)
    else:
        media_type = _media_type.__wrapped__(content_type)
    if media_type == MULTIPART:
        return None
    query_string: bytes = scope.get("query_string", b"")
    query = _query(query_string) if len(query_string) <= CACHED_TEXT_BYTES else _query.__wrapped__(query_string)
    if query is None:
        return None
    model, version, top_k, timeout_ms = query
    params = ClassifyParams(model, version, top_k, timeout_ms, None if timeout is None else timeout.decode("latin-1"))
    return RawClassify(params, media_type)


@lru_cache(maxsize=64)
def _media_type(content_type: bytes) -> str:
    return parse_content_header(content_type.decode("latin-1"))[0].lower()


@lru_cache(maxsize=1024)
def _query(query_string: bytes) -> tuple[str | None, ...] | None:
    """The route's query parameters as Litestar reads them (None: one of them given twice)."""
    values: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, separator="&"):
        if key in _PARAMETERS:
            if key in values:
                return None
            values[key] = value
    return tuple(values.get(key) for key in _PARAMETERS)


class ClassifyFastPath:
    """Outermost of the app's wrappers: takes the requests `raw_classify` accepts, passes on the rest."""

    def __init__(self, app: ASGIApp, state: AppState, guard: AuthGuard, admission: Admission) -> None:
        self.app = app
        self.state = state
        self.guard = guard
        self.admission = admission
        self.metrics: Metrics | None = state.metrics
        self.max_body_bytes = state.config.limits.max_body_bytes
        # The route and handler routing resolves the path to: the guard's access rule and the
        # metrics' label come from them, as for every routed request.
        template, self.handler = guard.route(V1_CLASSIFY, "POST")
        if template is None:
            raise RuntimeError(f"no route serves POST {V1_CLASSIFY}")
        self.template: str = template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP and scope.get("method") == "POST" and scope["path"] == V1_CLASSIFY:
            request = raw_classify(scope)
            if request is not None:
                await self._classify(scope, receive, send, request)
                return
        await self.app(scope, receive, send)

    async def _classify(self, scope: Scope, receive: Receive, send: Send, request: RawClassify) -> None:
        request_id = request_id_of(scope)
        token = current_request_id.set(request_id)
        try:
            with lease_scope():
                started = time.perf_counter()
                status = 500  # what the client sees if this dies before answering
                try:
                    status = await self._answer(scope, receive, send, request, request_id.encode("latin-1"))
                finally:
                    if self.metrics is not None:
                        self.metrics.observe_answer(scope, status, started)
        finally:
            current_request_id.reset(token)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, request: RawClassify, raw_id: bytes) -> int:
        """Answers the request; returns the status it answered with."""
        refused = _Refusal(send, raw_id)
        rate_headers = await self.guard.check(scope, refused.send, time.monotonic(), self.template, self.handler)
        if rate_headers is None:
            return refused.status
        admission = self.admission
        route = classify_route(scope)
        if route is None or not await admission.admit(scope, refused.send, route):
            return refused.status
        try:
            # Routing's marks on the request: the HTTP metrics label it by them.
            scope["path_template"], scope["route_handler"] = self.template, self.handler
            status, headers, body = await self._respond(scope, admission.receive_in_time(receive), request)
            headers.extend(rate_headers)
            headers.append((b"x-request-id", raw_id))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            admission.release()
        return status

    async def _respond(self, scope: Scope, receive: Receive, request: RawClassify) -> tuple[int, Headers, bytes]:
        """The status, headers and body Litestar's route and its error handler would answer with."""
        max_body_bytes = self.max_body_bytes

        async def read_images() -> tuple[list[ImageInput], bool]:
            return await raw_image(request.media_type, lambda: read_body(receive, max_body_bytes)), False

        try:
            answer = await classify(self.state, scope, request.params, read_images)
        except Exception as exc:  # noqa: BLE001 - every error is an answer, as the route's error handler makes it
            info = describe(exc)
            note_error("POST", V1_CLASSIFY, exc, info)
            return _with_body(info.headers, info.status, _encode(v1_body(info)))
        return _with_body(answer.headers, answer.status, _encode(answer.body))


async def read_body(receive: Receive, max_bytes: int) -> bytes:
    """The whole body, as Litestar's `Request.body()` reads it for the route, with the route's
    errors: over `max_bytes` 413, the client gone before its end 400."""
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            if body:
                total += len(body)
                if total > max_bytes:
                    raise PayloadTooLarge(BODY_OVER_LIMIT)
                chunks.append(body)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise InvalidRequest(CLIENT_LEFT)


def _with_body(extra: dict[str, str], status: int, body: bytes) -> tuple[int, Headers, bytes]:
    """Headers in Litestar's order: the answer's own, then its type and length."""
    headers: Headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()]
    headers.append(_JSON)
    headers.append((b"content-length", str(len(body)).encode()))
    return status, headers, body


class _Refusal:
    """The `send` of a refusal answered by the guard or admission: it carries X-Request-ID, as
    every answer does, and its status is noted for the metrics."""

    __slots__ = ("raw_id", "status", "_send")

    def __init__(self, send: Send, raw_id: bytes) -> None:
        self._send = send
        self.raw_id = raw_id
        self.status = 500

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
            headers.append((b"x-request-id", self.raw_id))
            message["headers"] = headers
        await self._send(message)
