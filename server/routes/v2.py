"""The Open Inference Protocol (KServe V2, as Triton speaks it) over REST.

Errors raise typed exceptions; the one mapper renders them as `{"error": "<message>"}` on /v2.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from batchserve.server.errors import Draining, InvalidRequest, ModelNotReady, describe
from batchserve.server.inference import Deadline, header_timeout_ms
from batchserve.server.registry import LoadedModel
from batchserve.server.request_context import caller_of
from batchserve.server.routes.v1 import read_body
from batchserve.server.state import AppState
from batchserve.server.v2.codec import HEADER_LENGTH, DecodedRequest, decode_content, decode_request, encode_response
from batchserve.server.v2.execute import ROUTE, run_plan
from batchserve.server.v2.metadata import model_config, model_metadata, server_metadata
from batchserve.server.v2.plan import plan_request

MAX_VERSION = 2**31 - 1
# Bodies above this are parsed in a worker thread: a JSON tensor of a few images takes tens of
# milliseconds to decode, which would stall every other request on the event loop.
INLINE_PARSE_BYTES = 64 * 1024


def parse_version(version: str | None) -> int | None:
    """A path's model version: a positive integer; absent means the latest loaded one."""
    if version is None:
        return None
    if not version.isdigit() or not 1 <= int(version) <= MAX_VERSION:
        raise InvalidRequest(f"model version must be a positive integer, not {version!r}")
    return int(version)


async def _parse(request: Request, app_state: AppState) -> DecodedRequest:
    body = await read_body(request)
    encoding = request.headers.get("content-encoding")
    header_length = request.headers.get(HEADER_LENGTH)
    limit = app_state.config.max_body_bytes

    def parse() -> DecodedRequest:
        return decode_request(decode_content(body, encoding, limit), header_length)

    if len(body) <= INLINE_PARSE_BYTES and encoding is None:
        return parse()
    return await asyncio.get_running_loop().run_in_executor(app_state.classifier.decode_pool, parse)


MODEL_PATHS = ["/models/{name:str}", "/models/{name:str}/versions/{version:str}"]


def _paths(suffix: str) -> list[str]:
    return [path + suffix for path in MODEL_PATHS]


class V2Controller(Controller):
    path = "/v2"
    tags = ["v2"]

    @get("/", summary="Server metadata: name, version, protocol extensions")
    async def server_metadata(self) -> dict[str, Any]:
        return server_metadata()

    @get("/health/live", summary="200 while the process runs")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @get("/health/ready", summary="200 when every model is loaded and warm and the server is not draining")
    async def ready(self, app_state: NamedDependency[AppState]) -> dict[str, bool]:
        if app_state.lifecycle.draining:
            raise Draining("the server is shutting down", headers={"Retry-After": "1"})
        if not app_state.ready:
            raise ModelNotReady("the server is not ready: models are still loading", headers={"Retry-After": "1"})
        return {"ready": True}

    @get(MODEL_PATHS, summary="Model metadata: versions, platform, inputs and outputs")
    async def model_metadata(self, app_state: NamedDependency[AppState], name: FromPath[str], version: FromPath[str | None] = None) -> dict[str, Any]:
        model = app_state.registry.get(name, parse_version(version))
        return model_metadata(app_state.registry, model)

    @get(_paths("/ready"), summary="200 when this model (version) is loaded and takes requests")
    async def model_ready(self, app_state: NamedDependency[AppState], name: FromPath[str], version: FromPath[str | None] = None) -> dict[str, Any]:
        model = app_state.registry.get(name, parse_version(version))
        if model.batcher.closing:
            raise ModelNotReady(f"model {name!r} version {model.version} is being unloaded")
        return {"name": model.name, "version": str(model.version), "ready": True}

    @get(_paths("/config"), summary="Model configuration, as Triton's ModelConfig JSON")
    async def model_config(self, app_state: NamedDependency[AppState], name: FromPath[str], version: FromPath[str | None] = None) -> dict[str, Any]:
        model = app_state.registry.get(name, parse_version(version))
        return model_config(app_state.registry, model)

    @post(_paths("/infer"), status_code=200, summary="Inference: JSON tensors or the binary tensor data extension")
    async def infer(self, request: Request, app_state: NamedDependency[AppState], name: FromPath[str], version: FromPath[str | None] = None) -> Response[bytes]:
        started = time.monotonic()
        caller = caller_of(request.scope)
        model: LoadedModel | None = None
        try:
            app_state.refuse_if_draining()
            model = app_state.registry.get(name, parse_version(version))
            decoded = await _parse(request, app_state)
            plan = plan_request(decoded, model, app_state.config.max_images_per_request)
            timeout_ms = plan.timeout_ms if plan.timeout_ms is not None else header_timeout_ms(request.headers)
            deadline = Deadline.for_request(model, timeout_ms, started)
        except Exception as exc:
            app_state.recorder.failure(
                caller, ROUTE, describe(exc), (time.monotonic() - started) * 1000.0,
                model.name if model else name, model.version if model else None,
            )
            raise
        outputs = await run_plan(app_state, model, plan, deadline, caller, started)
        content, headers, media_type = encode_response(model.name, str(model.version), decoded.request.id, outputs)
        return Response(content, media_type=media_type, headers=headers)
