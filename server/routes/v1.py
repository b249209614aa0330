"""The batchserve REST API: classify images, list models."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIType
from litestar.params import FromPath, HeaderParameter, QueryParameter

from batchserve.server.client_numbers import MAX_MODEL_VERSION
from batchserve.server.errors import V1_HANDLERS
from batchserve.server.model_summary import model_summary
from batchserve.server.request_input import TIMEOUT_HEADER, read_images
from batchserve.server.schemas import (
    ClassifyOperation,
    ClassifyResult,
    ErrorResponse,
    MultiClassifyResult,
    error_responses,
)
from batchserve.server.state import AppState
from batchserve.server.v1_classify import DEFAULT_TOP_K, ClassifyParams, classify

# Query parameters arrive as text and are parsed in the handler, inside `recording(...)`, so a
# refused value is an event like every other refusal; /schema still shows their real types.
_NOT_NULL: dict[str, Any] = {"one_of": None}
VERSION_SCHEMA = {**_NOT_NULL, "type": OpenAPIType.INTEGER, "minimum": 1, "maximum": MAX_MODEL_VERSION}
TOP_K_SCHEMA = {**_NOT_NULL, "type": OpenAPIType.INTEGER, "minimum": 1, "default": DEFAULT_TOP_K}
TIMEOUT_SCHEMA = {**_NOT_NULL, "type": OpenAPIType.NUMBER, "exclusive_minimum": 0}
# A multipart request whose files all failed answers with its per-file results, under the first error's status.
CLASSIFY_ERRORS = {
    **error_responses(ErrorResponse | MultiClassifyResult, 400, 413, 415, 502, 503, 504),
    **error_responses(ErrorResponse, 404, 422),
}


class ClassifyController(Controller):
    path = "/v1"
    tags = ["v1"]
    exception_handlers = V1_HANDLERS

    @post("/classify", status_code=200, summary="Classify one image (raw body) or several (multipart 'image' files)",
          operation_class=ClassifyOperation, responses=CLASSIFY_ERRORS)
    async def classify(
        self,
        request: Request,
        app_state: NamedDependency[AppState],
        model: Annotated[str | None, QueryParameter(description="model name (default: the server's default)")] = None,
        version: Annotated[str | None, QueryParameter(
            description="model version (default: the latest loaded)", schema_extra=VERSION_SCHEMA)] = None,
        top_k: Annotated[str | None, QueryParameter(
            description="predictions per image, at most the model's number of classes", schema_extra=TOP_K_SCHEMA,
        )] = None,
        timeout_ms: Annotated[str | None, QueryParameter(
            description="deadline in milliseconds, capped by the model's maximum", schema_extra=TIMEOUT_SCHEMA,
        )] = None,
        timeout_header: Annotated[str | None, HeaderParameter(
            name=TIMEOUT_HEADER, description="the deadline when timeout_ms is not given", schema_extra=TIMEOUT_SCHEMA,
        )] = None,
    ) -> Response[ClassifyResult | MultiClassifyResult]:
        # A raw body usually takes the fast path (fast_classify.py) and never reaches this handler.
        params = ClassifyParams(model, version, top_k, timeout_ms, timeout_header)
        max_files = app_state.config.limits.max_images_per_request
        answer = await classify(app_state, request.scope, params, lambda: read_images(request, max_files))
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    @get("/models", summary="Loaded models, their versions, batching settings and live stats")
    async def list_models(self, app_state: NamedDependency[AppState]) -> dict[str, Any]:
        registry = app_state.serving.registry
        return {"models": [model_summary(m) for m in registry.loaded()], "default_model": registry.default_name()}

    @get("/models/{name:str}", summary="One model: every loaded version",
         responses=error_responses(ErrorResponse, 400, 404))
    async def get_model(self, app_state: NamedDependency[AppState], name: FromPath[str]) -> dict[str, Any]:
        registry = app_state.serving.registry
        registry.lease(name)  # raises ModelNotFound
        versions = [model_summary(registry.lease(name, v)) for v in registry.versions(name)]
        return {"name": name, "versions": versions}
