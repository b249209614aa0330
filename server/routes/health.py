"""Liveness and readiness, as load balancers and Cloud Run probes read them."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from batchserve.server.state import AppState


@get("/healthz", summary="The process is alive", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="200 when models are warm, the backend answers and the server is not draining",
     tags=["health"])
async def readyz(app_state: NamedDependency[AppState]) -> Response[dict[str, object]]:
    life = app_state.lifecycle
    if life.draining:
        status = "draining"
    elif not (life.warm and app_state.serving.registry.ready):
        status = "loading"
    elif not app_state.backend.ready:
        status = "backend_unavailable"  # a queue web tier that cannot reach S3/SQS
    else:
        status = "ready"
    body: dict[str, object] = {
        "status": status,
        "models": {m.name: m.version for m in app_state.serving.registry.loaded()},
    }
    return Response(body, status_code=200 if status == "ready" else 503,
                    headers={} if status == "ready" else {"Retry-After": "1"})
