"""Answers given at the front door, before Litestar routes the request or reads its body:
authentication refusals, rate limits, overload.

They have the same shapes as the routes' own errors (`{"error": {"code", "message"}}` on /v1 and
the pages, `{"error": "message"}` on /v2), and a refused classification still leaves its one
event, as a request that failed before any image was read.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from dataclasses import dataclass
from functools import lru_cache

from litestar.types import Scope, Send

from batchserve.server.errors import V2_PREFIX, v1_body, v2_body
from batchserve.server.request_context import caller_of
from batchserve.serving.errors import ErrorInfo
from batchserve.serving.recording import Recorder

V1_CLASSIFY = "/v1/classify"
# Clients send the same few query strings (and Content-Types) over and over: parsed once each,
# but for longer ones, parsed every time so that what a cache holds stays small.
CACHED_TEXT_BYTES = 256
_V2_INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")


@dataclass(frozen=True)
class ClassifyRoute:
    """A classification request as its path and query name it, before any parsing or validation."""

    family: str  # "v1" or "v2": the route family its events and error shapes belong to
    model: str | None  # as asked; None: the default model
    version: str | None  # as asked, unparsed; None: the latest


def classify_route(scope: Scope) -> ClassifyRoute | None:
    """The request's classification route, or None when it asks for something else."""
    path: str = scope.get("path", "")
    if path == V1_CLASSIFY:
        query_string: bytes = scope.get("query_string", b"")
        if len(query_string) <= CACHED_TEXT_BYTES:
            return _v1_route(query_string)
        return _v1_route.__wrapped__(query_string)
    match = _V2_INFER.match(path)
    if match:
        return ClassifyRoute("v2", urllib.parse.unquote(match["name"]), match["version"])
    return None


@lru_cache(maxsize=1024)
def _v1_route(query_string: bytes) -> ClassifyRoute:
    query = urllib.parse.parse_qs(query_string.decode("latin-1"))
    models, versions = query.get("model"), query.get("version")
    return ClassifyRoute("v1", models[0] if models else None, versions[0] if versions else None)


def error_json(path: str, info: ErrorInfo) -> bytes:
    in_v2 = path == V2_PREFIX or path.startswith(V2_PREFIX + "/")
    return json.dumps(v2_body(info) if in_v2 else v1_body(info)).encode()


def error_answer(path: str, info: ErrorInfo, extra_headers: dict[str, str] | None = None,
                 ) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The error's headers (but X-Request-ID) and JSON body, as every front-door refusal answers it."""
    body = error_json(path, info)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    for name, value in {**info.headers, **(extra_headers or {})}.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return headers, body


async def send_error(scope: Scope, send: Send, info: ErrorInfo, extra_headers: dict[str, str] | None = None) -> None:
    """The error as a complete JSON answer (X-Request-ID is added by the outer middleware)."""
    headers, body = error_answer(scope.get("path", ""), info, extra_headers)
    await send({"type": "http.response.start", "status": info.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def refuse(
    scope: Scope, send: Send, recorder: Recorder | None, info: ErrorInfo, started: float,
    extra_headers: dict[str, str] | None = None,
) -> None:
    """Answer `info` without touching the body; a classification request leaves its event."""
    route = classify_route(scope)
    if recorder is not None and route is not None:
        latency_ms = (time.monotonic() - started) * 1000.0
        recorder.record_refused(caller_of(scope), route.family, info, latency_ms, route.model)
    await send_error(scope, send, info, extra_headers)
