"""The batchserve REST API: classify images, list models, read analytics."""

from __future__ import annotations

import time
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import InternalServerException
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from batchserve.server.errors import ErrorAnswer, InvalidRequest, UnsupportedMediaType, describe
from batchserve.server.inference import Classified, Deadline, Failed, ImageInput, header_timeout_ms, validate_top_k
from batchserve.server.registry import LoadedModel, model_summary
from batchserve.server.request_context import caller_of
from batchserve.server.schemas import ClassifyResult, ErrorOut, FileOutcome, MultiClassifyResult, PredictionOut, Timing
from batchserve.server.state import AppState

MULTIPART = "multipart/form-data"
RAW_TYPES_WITHOUT_IMAGE_PREFIX = ("", "application/octet-stream")


async def read_body(request: Request) -> bytes:
    """The whole body, capped by the app's request_max_body_size (Litestar answers 413 past it)."""
    try:
        return await request.body()
    except InternalServerException as exc:  # raised by Litestar when the client hangs up mid-body
        raise InvalidRequest("the client disconnected before the request body was complete") from exc


async def read_images(request: Request, max_files: int) -> tuple[list[ImageInput], bool]:
    """(images, is_multipart) from a raw image body or a multipart form with `image` files."""
    media_type = request.content_type[0].lower()
    if media_type == MULTIPART:
        form = await request.form()
        parts = form.getall("image") if "image" in form else []
        if not parts:
            fields = ", ".join(sorted(form.keys())) or "none"
            raise InvalidRequest(f"multipart request has no 'image' file field (fields sent: {fields})")
        if len(parts) > max_files:
            raise InvalidRequest(f"too many files: {len(parts)} sent, at most {max_files} per request")
        images = []
        for part in parts:
            if not isinstance(part, UploadFile):
                raise InvalidRequest("the 'image' field must be a file upload, not a text value")
            images.append(ImageInput(await part.read(), part.filename or None, part.content_type or None))
        return images, True
    if media_type.startswith("image/") or media_type in RAW_TYPES_WITHOUT_IMAGE_PREFIX:
        body = await read_body(request)
        if not body:
            raise InvalidRequest("the request body is empty: send the image bytes, or multipart 'image' files")
        return [ImageInput(body, None, media_type or None)], False
    raise UnsupportedMediaType(
        f"Content-Type {media_type!r} is not accepted: send image/* bytes or multipart/form-data with 'image' files"
    )


def _result(caller_id: str, model: LoadedModel, item: Classified, total_ms: float) -> ClassifyResult:
    return ClassifyResult(
        request_id=caller_id,
        model=model.name,
        model_version=model.version,
        predictions=[PredictionOut(p.class_id, p.label, p.score) for p in item.predictions],
        timing_ms=Timing(queue=round(item.queue_ms, 3), inference=round(item.inference_ms, 3), total=round(total_ms, 3)),
        batch_size=item.batch_size,
    )


class ClassifyController(Controller):
    path = "/v1"
    tags = ["v1"]

    @post("/classify", status_code=200, summary="Classify one image (raw body) or several (multipart 'image' files)")
    async def classify(
        self,
        request: Request,
        app_state: NamedDependency[AppState],
        model: Annotated[str | None, QueryParameter(description="model name (default: the server's default)")] = None,
        version: Annotated[int | None, QueryParameter(ge=1, description="model version (default: latest)")] = None,
        top_k: Annotated[int, QueryParameter(ge=1, description="predictions per image")] = 5,
        timeout_ms: Annotated[float | None, QueryParameter(description="deadline in ms (also X-Request-Timeout-Ms)")] = None,
    ) -> Response[ClassifyResult | MultiClassifyResult]:
        started = time.monotonic()
        caller = caller_of(request.scope)
        loaded: LoadedModel | None = None
        try:
            app_state.refuse_if_draining()
            loaded = app_state.registry.get(model, version)
            k = validate_top_k(top_k, loaded)
            requested_ms = timeout_ms if timeout_ms is not None else header_timeout_ms(request.headers)
            deadline = Deadline.for_request(loaded, requested_ms, started)
            images, multipart = await read_images(request, app_state.config.max_images_per_request)
        except Exception as exc:
            app_state.recorder.failure(
                caller, "v1", describe(exc), (time.monotonic() - started) * 1000.0,
                loaded.name if loaded else model, loaded.version if loaded else version,
            )
            raise
        results = await app_state.classifier.classify(loaded, images, k, deadline)
        total_ms = (time.monotonic() - started) * 1000.0
        app_state.recorder.results(caller, "v1", loaded.name, loaded.version, results, total_ms)
        if not multipart:
            item = results[0]
            if isinstance(item, Failed):
                raise ErrorAnswer(item.error)
            return Response(_result(caller.request_id, loaded, item, total_ms))
        entries: list[FileOutcome] = []
        for item in results:
            filename = item.image.filename if item.image else None
            if isinstance(item, Classified):
                entries.append(FileOutcome(filename=filename, **_result(caller.request_id, loaded, item, total_ms).as_dict()))
            else:
                entries.append(FileOutcome(filename=filename, error=ErrorOut(item.error.code, item.error.message)))
        failures = [r for r in results if isinstance(r, Failed)]
        status, headers = 200, {}
        if len(failures) == len(results):
            status, headers = failures[0].error.status, failures[0].error.headers
        return Response(MultiClassifyResult(request_id=caller.request_id, results=entries), status_code=status,
                        headers=headers)

    @get("/models", summary="Loaded models, their versions, batching settings and live stats")
    async def list_models(self, app_state: NamedDependency[AppState]) -> dict[str, Any]:
        return {"models": [model_summary(m) for m in app_state.registry.loaded()],
                "default_model": app_state.registry.default_name()}

    @get("/models/{name:str}", summary="One model: every loaded version")
    async def get_model(self, app_state: NamedDependency[AppState], name: FromPath[str]) -> dict[str, Any]:
        app_state.registry.get(name)  # raises ModelNotFound
        versions = [model_summary(app_state.registry.get(name, v)) for v in app_state.registry.versions(name)]
        return {"name": name, "versions": versions}
