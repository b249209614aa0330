"""The Open Inference Protocol (KServe V2, as Triton speaks it) over REST.

Handlers raise typed exceptions; the controller's exception handler renders them as
`{"error": "<message>"}`, as the protocol says.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIType
from litestar.params import FromPath, HeaderParameter, PathParameter

from batchserve.server.client_numbers import MAX_MODEL_VERSION, MODEL_VERSION_PATTERN, model_version
from batchserve.server.errors import V2_HANDLERS
from batchserve.server.recording import recording
from batchserve.server.request_input import TIMEOUT_HEADER, read_body, requested_timeout_ms
from batchserve.server.schemas import V2ErrorResponse, error_responses
from batchserve.server.state import AppState
from batchserve.server.v2.codec import (
    HEADER_LENGTH,
    HEADER_LENGTH_DIGITS,
    DecodedRequest,
    decode_content,
    decode_request,
    encode_response,
)
from batchserve.server.v2.metadata import model_config, model_metadata, server_metadata
from batchserve.server.v2.openapi import InferOperation
from batchserve.server.v2.outputs import build_outputs
from batchserve.server.v2.plan import Plan, plan_request
from batchserve.serving.backend import NotServedHere
from batchserve.serving.classifier import Classification, Classified, Classifier, Deadline, ImageInput
from batchserve.serving.errors import Draining, ErrorAnswer, ErrorInfo, InvalidRequest, ModelNotReady
from batchserve.serving.registry import LoadedModel

ROUTE = "v2"
# Bodies above this are parsed in a worker thread: a JSON tensor of a few images takes tens of
# milliseconds to decode, which would stall every other request on the event loop.
INLINE_PARSE_BYTES = 64 * 1024

# The version is parsed in the handler (a refused infer request is recorded like any other);
# /schema shows the pattern it accepts.
Version = Annotated[str | None, PathParameter(
    description=f"model version, 1 to {MAX_MODEL_VERSION} (default: the latest loaded)",
    schema_extra={"one_of": None, "type": OpenAPIType.STRING, "pattern": MODEL_VERSION_PATTERN},
)]
HeaderLength = Annotated[str | None, HeaderParameter(
    name=HEADER_LENGTH.lower(),
    description="length of the JSON header when binary tensor data follows it in the body",
    schema_extra={"one_of": None, "type": OpenAPIType.STRING, "pattern": f"^[0-9]{{1,{HEADER_LENGTH_DIGITS}}}$"},
)]
TimeoutHeader = Annotated[str | None, HeaderParameter(
    name=TIMEOUT_HEADER, description="deadline in milliseconds when the request has no 'timeout' parameter",
    schema_extra={"one_of": None, "type": OpenAPIType.NUMBER, "exclusive_minimum": 0},
)]
MODEL_ERRORS = error_responses(V2ErrorResponse, 400, 404)
INFER_ERRORS = error_responses(V2ErrorResponse, 400, 404, 413, 415, 422, 501, 503, 504)


def parse_version(version: str | None) -> int | None:
    """A path's model version: a positive integer in ASCII digits; absent means the latest loaded one."""
    if version is None:
        return None
    parsed = model_version(version)
    if parsed is None:
        raise InvalidRequest(
            f"model version must be a positive integer (at most {MAX_MODEL_VERSION}), not {version[:40]!r}"
        )
    return parsed


async def _parse(request: Request, app_state: AppState, header_length: str | None) -> DecodedRequest:
    body = await read_body(request)
    encoding = request.headers.get("content-encoding")
    limit = app_state.config.limits.max_body_bytes

    def parse() -> DecodedRequest:
        return decode_request(decode_content(body, encoding, limit), header_length)

    if len(body) <= INLINE_PARSE_BYTES and encoding is None:
        return parse()
    return await asyncio.get_running_loop().run_in_executor(app_state.serving.classifier.decode_pool, parse)


async def _classify(classifier: Classifier, model: LoadedModel, plan: Plan, deadline: Deadline) -> Classification:
    """V1 and V2 requests ride the same batches through the same classifier. V2 has no
    per-sample errors, so a request's images reach the model only when all of them decoded.

    Images found in the result cache are answered from it: it keeps each answer's whole score
    vector (the logits), which is what every V2 output is built from. No fallback answers V2: the
    protocol addresses one model, whose metadata the client read and whose outputs it expects."""
    if plan.images is not None:
        images = [ImageInput(data) for data in plan.images]
        return await classifier.classify_images(model, images, 1, deadline, all_or_nothing=True, fall_back=False)
    assert plan.tensor is not None
    return await classifier.classify_tensors(model, list(plan.tensor), 1, deadline)  # views: no copy per sample


def _logits(outcome: Classification) -> np.ndarray:
    """Every sample's logits [N, C], or the request's first failure raised as its answer."""
    failures = outcome.failures
    if failures:
        first = failures[0]
        info = first.error
        if first.stage == "decode":
            info = ErrorInfo(info.status, info.code, f"image {first.position}: {info.message}", info.headers)
        raise ErrorAnswer(info)
    return np.stack([r.logits for r in outcome.results if isinstance(r, Classified)])


MODEL_PATHS = ["/models/{name:str}", "/models/{name:str}/versions/{version:str}"]


def _paths(suffix: str) -> list[str]:
    return [path + suffix for path in MODEL_PATHS]


class V2Controller(Controller):
    path = "/v2"
    tags = ["v2"]
    exception_handlers = V2_HANDLERS

    @get("/", summary="Server metadata: name, version, protocol extensions")
    async def server_metadata(self) -> dict[str, Any]:
        return server_metadata()

    @get("/health/live", summary="200 while the process runs")
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @get("/health/ready", summary="200 when every model is loaded and warm and the server is not draining",
         responses=error_responses(V2ErrorResponse, 503))
    async def ready(self, app_state: NamedDependency[AppState]) -> dict[str, bool]:
        if app_state.lifecycle.draining:
            raise Draining("the server is shutting down", headers={"Retry-After": "1"})
        if not app_state.ready:
            cpu_only = app_state.gpu.unmet(app_state.serving.registry.loaded()) if app_state.lifecycle.warm else []
            if cpu_only:
                raise ModelNotReady(f"the server is not ready: --require-gpu, and {cpu_only[0].name} runs on CPU only")
            raise ModelNotReady("the server is not ready: models are still loading", headers={"Retry-After": "1"})
        return {"ready": True}

    @get(MODEL_PATHS, summary="Model metadata: versions, platform, inputs and outputs", responses=MODEL_ERRORS)
    async def model_metadata(
        self, app_state: NamedDependency[AppState], name: FromPath[str], version: Version = None
    ) -> dict[str, Any]:
        model = app_state.serving.registry.lease(name, parse_version(version))
        return model_metadata(app_state.serving.registry, model)

    @get(_paths("/ready"), summary="200 when this model (version) is loaded and takes requests",
         responses=error_responses(V2ErrorResponse, 400, 404, 503))
    async def model_ready(
        self, app_state: NamedDependency[AppState], name: FromPath[str], version: Version = None
    ) -> dict[str, Any]:
        model = app_state.serving.registry.lease(name, parse_version(version))
        if model.batcher.closing:
            raise ModelNotReady(f"model {name!r} version {model.version} is being unloaded")
        return {"name": model.name, "version": str(model.version), "ready": True}

    @get(_paths("/config"), summary="Model configuration, as Triton's ModelConfig JSON", responses=MODEL_ERRORS)
    async def model_config(
        self, app_state: NamedDependency[AppState], name: FromPath[str], version: Version = None
    ) -> dict[str, Any]:
        model = app_state.serving.registry.lease(name, parse_version(version))
        return model_config(app_state.serving.registry, model)

    @post(_paths("/infer"), status_code=200, summary="Inference: JSON tensors or the binary tensor data extension",
          operation_class=InferOperation, responses=INFER_ERRORS)
    async def infer(
        self,
        request: Request,
        app_state: NamedDependency[AppState],
        name: FromPath[str],
        version: Version = None,
        header_length: HeaderLength = None,
        timeout_header: TimeoutHeader = None,
    ) -> Response[bytes]:
        serving = app_state.serving
        with recording(serving.recorder, request.scope, ROUTE, name) as record:
            app_state.refuse_if_draining()
            if app_state.backend.name == "queue":
                raise NotServedHere("this web tier classifies through its queue workers, which take images on "
                                    "/v1/classify and /v1/jobs; V2 inference needs a server run with --backend direct")
            if app_state.backend.name == "remote":
                raise NotServedHere("this web tier forwards /v1/classify to its upstreams; send V2 inference to "
                                    "an upstream (a server run with --backend direct)")
            model = record.uses(serving.registry.lease(name, parse_version(version)))
            decoded = await _parse(request, app_state, header_length)
            plan = plan_request(decoded, model, app_state.config.limits.max_images_per_request)
            timeout_ms = plan.timeout_ms if plan.timeout_ms is not None else requested_timeout_ms(None, timeout_header)
            deadline = Deadline.for_request(model, timeout_ms, record.started)
            outcome = await _classify(serving.classifier, model, plan, deadline)
            record.finish(outcome)
        outputs = build_outputs(model, plan.outputs, _logits(outcome))
        content, headers, media_type = encode_response(model.name, str(model.version), decoded.request.id, outputs)
        return Response(content, media_type=media_type, headers=headers)
