"""The batchserve REST API: classify images, list models."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIType
from litestar.params import FromPath, HeaderParameter, QueryParameter

from batchserve.server.client_numbers import MAX_MODEL_VERSION, ascii_int, model_version
from batchserve.server.errors import V1_HANDLERS
from batchserve.server.model_summary import model_summary
from batchserve.server.recording import recording
from batchserve.server.request_input import TIMEOUT_HEADER, read_images, requested_timeout_ms
from batchserve.server.schemas import (
    ClassifyOperation,
    ClassifyResult,
    ErrorOut,
    ErrorResponse,
    FileOutcome,
    MultiClassifyResult,
    PredictionOut,
    Timing,
    error_responses,
)
from batchserve.server.state import AppState
from batchserve.serving.classifier import Classification, Classified, Deadline, Failed, validate_top_k
from batchserve.serving.errors import ErrorAnswer, InvalidParameter
from batchserve.serving.fallback import StandIn

ROUTE = "v1"
DEFAULT_TOP_K = 5
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


def version_query(text: str | None) -> int | None:
    if text is None:
        return None
    version = model_version(text)
    if version is None:
        raise InvalidParameter(
            f"version must be a positive integer (at most {MAX_MODEL_VERSION}), not {text[:40]!r}"
        )
    return version


def top_k_query(text: str | None) -> int:
    if text is None:
        return DEFAULT_TOP_K
    k = ascii_int(text, max_digits=9)
    if k is None:
        raise InvalidParameter(f"top_k must be a positive integer, not {text[:40]!r}")
    return k


def _result(caller_id: str, outcome: Classification, item: Classified, total_ms: float) -> ClassifyResult:
    """One sample's answer, naming the model that really answered it (its fallback, when one did)."""
    model = outcome.answered_by(item)
    fallback_for = model.primary if isinstance(model, StandIn) else None
    return ClassifyResult(
        request_id=caller_id,
        model=model.name,
        model_version=model.version,
        predictions=[PredictionOut(p.class_id, p.label, p.score) for p in item.predictions],
        timing_ms=Timing(
            queue=round(item.queue_ms, 3), inference=round(item.inference_ms, 3), total=round(total_ms, 3)
        ),
        batch_size=item.batch_size,
        cache="hit" if item.cached is not None else None,
        fallback=True if fallback_for is not None else None,
        fallback_for=fallback_for,
    )


def _multipart(
    request_id: str, outcome: Classification, total_ms: float
) -> Response[ClassifyResult | MultiClassifyResult]:
    """One entry per file in upload order; the status is 200 when any file succeeded, else the first error's."""
    entries: list[FileOutcome] = []
    for item in outcome.results:
        filename = item.image.filename if item.image else None
        if isinstance(item, Classified):
            result = _result(request_id, outcome, item, total_ms)
            entries.append(FileOutcome(filename=filename, **result.as_dict()))
        else:
            entries.append(FileOutcome(filename=filename, error=ErrorOut(item.error.code, item.error.message)))
    failures = outcome.failures
    status, headers = 200, {}
    if len(failures) == len(outcome.results):
        status, headers = failures[0].error.status, failures[0].error.headers
    body = MultiClassifyResult(request_id=request_id, results=entries)
    answer: Response[ClassifyResult | MultiClassifyResult] = Response(body, status_code=status, headers=headers)
    return answer


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
        serving = app_state.serving
        with recording(serving.recorder, request, ROUTE, model) as record:
            app_state.refuse_if_draining()
            requested_version = record.version = version_query(version)
            requested_k = top_k_query(top_k)
            requested_ms = requested_timeout_ms(timeout_ms, timeout_header)
            # The model's fallback stands in when the model is not loaded (serving/fallback.py).
            loaded = record.uses(serving.fallbacks.lease(model, requested_version, requested_k))
            k = validate_top_k(requested_k, loaded)
            deadline = Deadline.for_request(loaded, requested_ms, record.started)
            images, multipart = await read_images(request, app_state.config.limits.max_images_per_request)
            outcome = await app_state.backend.classify_images(loaded, images, k, deadline, record.caller)
            total_ms = record.finish(outcome)
        request_id = record.caller.request_id
        if multipart:
            return _multipart(request_id, outcome, total_ms)
        (item,) = outcome.results
        if isinstance(item, Failed):
            raise ErrorAnswer(item.error)
        return Response(_result(request_id, outcome, item, total_ms))

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
