"""`GET /metrics`: the Prometheus scrape endpoint, on the API port (stats scope under `--auth
required`) and, with `--metrics-port`, alone on a second listener without auth."""

from __future__ import annotations

import json

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.exceptions import NotFoundException
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from batchserve.server.metrics import Metrics
from batchserve.server.state import AppState

PATH = "/metrics"


@get(PATH, summary="Prometheus metrics", tags=["observability"], include_in_schema=False)
async def metrics(request: Request, app_state: NamedDependency[AppState]) -> Response[bytes]:
    if app_state.metrics is None:
        raise NotFoundException("metrics are not collected by this app")
    body, content_type = app_state.metrics.exposition(request.headers.get("accept"))
    # As a header: media_type would get a second "; charset=" appended to the negotiated type.
    return Response(body, headers={"content-type": content_type})


def metrics_only_app(source: Metrics) -> ASGIApp:
    """A bare ASGI app answering `GET /metrics` and nothing else, for the private metrics listener."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            return
        status, headers = 200, [(b"cache-control", b"no-store")]
        path = "/" + scope.get("path", "/").strip("/")
        method = scope.get("method", "GET")
        if path != PATH:
            status, body = 404, _error("not_found", "this listener serves GET /metrics only")
            headers.append((b"content-type", b"application/json"))
        elif method not in ("GET", "HEAD"):
            status, body = 405, _error("method_not_allowed", "/metrics answers GET only")
            headers += [(b"content-type", b"application/json"), (b"allow", b"GET, HEAD")]
        else:
            accept = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"accept"), None)
            body, content_type = source.exposition(accept)
            headers.append((b"content-type", content_type.encode("latin-1")))
        headers.append((b"content-length", str(len(body)).encode()))
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": headers}
        end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"" if method == "HEAD" else body,
                                      "more_body": False}
        await send(start)
        await send(end)

    return app


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()
