"""`GET /metrics`: the Prometheus scrape endpoint."""

from __future__ import annotations

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException

from batchserve.server.state import AppState


@get("/metrics", summary="Prometheus metrics", tags=["observability"], include_in_schema=False)
async def metrics(request: Request, app_state: NamedDependency[AppState]) -> Response[bytes]:
    if app_state.metrics is None:
        raise NotFoundException("metrics are not collected by this app")
    body, content_type = app_state.metrics.exposition(request.headers.get("accept"))
    # As a header: media_type would get a second "; charset=" appended to the negotiated type.
    return Response(body, headers={"content-type": content_type})
