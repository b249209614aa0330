"""Liveness and readiness, as load balancers and Cloud Run probes read them."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from batchserve.server.state import AppState
from batchserve.serving.gpu_requirement import names


@get("/healthz", summary="The process is alive", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="200 when models are warm (on a GPU with --require-gpu), the backend answers and the server "
     "is not draining", tags=["health"])
async def readyz(app_state: NamedDependency[AppState]) -> Response[dict[str, object]]:
    life = app_state.lifecycle
    registry = app_state.serving.registry
    cpu_only = app_state.gpu.unmet(registry.loaded()) if life.warm and registry.ready else []
    if life.draining:
        status = "draining"
    elif not (life.warm and registry.ready):
        status = "loading"
    elif cpu_only:
        status = "gpu_unavailable"  # --require-gpu, and a session got no CUDA/TensorRT
    elif not app_state.backend.ready:
        status = "backend_unavailable"  # a queue web tier that cannot reach S3/SQS
    else:
        status = "ready"
    body: dict[str, object] = {
        "status": status,
        "models": {m.name: m.version for m in registry.loaded()},
    }
    headers = {} if status == "ready" else {"Retry-After": "1"}
    if status == "gpu_unavailable":
        body["cpu_only"] = names(cpu_only)
        body["message"] = (f"--require-gpu: {', '.join(names(cpu_only))} "
                           f"{'runs' if len(cpu_only) == 1 else 'run'} on CPU only; the log says why")
        headers = {}  # a process does not find its GPU by asking again: the platform replaces it
    return Response(body, status_code=200 if status == "ready" else 503, headers=headers)
