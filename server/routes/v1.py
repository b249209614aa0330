"""The batchserve REST API: classify images, list models."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from batchserve.server.errors import V1_HANDLERS
from batchserve.server.model_summary import model_summary
from batchserve.server.recording import recording
from batchserve.server.request_input import header_timeout_ms, read_images
from batchserve.server.schemas import ClassifyResult, ErrorOut, FileOutcome, MultiClassifyResult, PredictionOut, Timing
from batchserve.server.state import AppState
from batchserve.serving.classifier import Classification, Classified, Deadline, Failed, validate_top_k
from batchserve.serving.errors import ErrorAnswer
from batchserve.serving.registry import LoadedModel

ROUTE = "v1"


def _result(caller_id: str, model: LoadedModel, item: Classified, total_ms: float) -> ClassifyResult:
    return ClassifyResult(
        request_id=caller_id,
        model=model.name,
        model_version=model.version,
        predictions=[PredictionOut(p.class_id, p.label, p.score) for p in item.predictions],
        timing_ms=Timing(
            queue=round(item.queue_ms, 3), inference=round(item.inference_ms, 3), total=round(total_ms, 3)
        ),
        batch_size=item.batch_size,
    )


def _multipart(
    request_id: str, outcome: Classification, total_ms: float
) -> Response[ClassifyResult | MultiClassifyResult]:
    """One entry per file in upload order; the status is 200 when any file succeeded, else the first error's."""
    entries: list[FileOutcome] = []
    for item in outcome.results:
        filename = item.image.filename if item.image else None
        if isinstance(item, Classified):
            result = _result(request_id, outcome.model, item, total_ms)
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

    @post("/classify", status_code=200, summary="Classify one image (raw body) or several (multipart 'image' files)")
    async def classify(
        self,
        request: Request,
        app_state: NamedDependency[AppState],
        model: Annotated[str | None, QueryParameter(description="model name (default: the server's default)")] = None,
        version: Annotated[int | None, QueryParameter(ge=1, description="model version (default: latest)")] = None,
        top_k: Annotated[int, QueryParameter(ge=1, description="predictions per image")] = 5,
        timeout_ms: Annotated[
            float | None, QueryParameter(description="deadline in ms (also X-Request-Timeout-Ms)")
        ] = None,
    ) -> Response[ClassifyResult | MultiClassifyResult]:
        serving = app_state.serving
        with recording(serving.recorder, request, ROUTE, model, version) as record:
            app_state.refuse_if_draining()
            loaded = record.uses(serving.registry.lease(model, version))
            k = validate_top_k(top_k, loaded)
            requested_ms = timeout_ms if timeout_ms is not None else header_timeout_ms(request.headers)
            deadline = Deadline.for_request(loaded, requested_ms, record.started)
            images, multipart = await read_images(request, app_state.config.limits.max_images_per_request)
            outcome = await serving.classifier.classify_images(loaded, images, k, deadline)
            total_ms = record.finish(outcome)
        request_id = record.caller.request_id
        if multipart:
            return _multipart(request_id, outcome, total_ms)
        (item,) = outcome.results
        if isinstance(item, Failed):
            raise ErrorAnswer(item.error)
        return Response(_result(request_id, loaded, item, total_ms))

    @get("/models", summary="Loaded models, their versions, batching settings and live stats")
    async def list_models(self, app_state: NamedDependency[AppState]) -> dict[str, Any]:
        registry = app_state.serving.registry
        return {"models": [model_summary(m) for m in registry.loaded()], "default_model": registry.default_name()}

    @get("/models/{name:str}", summary="One model: every loaded version")
    async def get_model(self, app_state: NamedDependency[AppState], name: FromPath[str]) -> dict[str, Any]:
        registry = app_state.serving.registry
        registry.lease(name)  # raises ModelNotFound
        versions = [model_summary(registry.lease(name, v)) for v in registry.versions(name)]
        return {"name": name, "versions": versions}
