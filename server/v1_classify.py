"""One /v1/classify request, whichever way it came in: through Litestar's route (routes/v1.py) or
the fast path for raw bodies (fast_classify.py). Both hand over the request's text parameters and
a way to read its images, and answer what this returns, or the error it raises, the same way."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from litestar.types import Scope

from batchserve.server.client_numbers import MAX_MODEL_VERSION, ascii_int, model_version
from batchserve.server.recording import recording
from batchserve.server.request_input import requested_timeout_ms
from batchserve.server.schemas import ClassifyResult, ErrorOut, FileOutcome, MultiClassifyResult, PredictionOut, Timing
from batchserve.server.state import AppState
from batchserve.serving.classifier import Classification, Classified, Deadline, Failed, ImageInput, validate_top_k
from batchserve.serving.errors import ErrorAnswer, InvalidParameter
from batchserve.serving.fallback import StandIn

ROUTE = "v1"
DEFAULT_TOP_K = 5
# (images, sent as multipart): read once the parameters are known to be good.
ImageReader = Callable[[], Awaitable[tuple[list[ImageInput], bool]]]


class ClassifyParams(NamedTuple):
    """The request's parameters as the client wrote them: parsed inside `recording(...)`, so a
    refused value is an event like every other refusal."""

    model: str | None = None
    version: str | None = None
    top_k: str | None = None
    timeout_ms: str | None = None
    timeout_header: str | None = None  # X-Request-Timeout-Ms, used when timeout_ms is not given


@dataclass(frozen=True)
class ClassifyAnswer:
    status: int
    headers: dict[str, str]
    body: ClassifyResult | MultiClassifyResult


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


async def classify(app_state: AppState, scope: Scope, params: ClassifyParams, read_images: ImageReader,
                   ) -> ClassifyAnswer:
    """Classifies the request's images; raises what the client is answered instead (recorded)."""
    serving = app_state.serving
    with recording(serving.recorder, scope, ROUTE, params.model) as record:
        app_state.refuse_if_draining()
        requested_version = record.version = version_query(params.version)
        requested_k = top_k_query(params.top_k)
        requested_ms = requested_timeout_ms(params.timeout_ms, params.timeout_header)
        # The model's fallback stands in when the model is not loaded (serving/fallback.py).
        loaded = record.uses(serving.fallbacks.lease(params.model, requested_version, requested_k))
        k = validate_top_k(requested_k, loaded)
        deadline = Deadline.for_request(loaded, requested_ms, record.started)
        images, multipart = await read_images()
        outcome = await app_state.backend.classify_images(loaded, images, k, deadline, record.caller)
        total_ms = record.finish(outcome)
    request_id = record.caller.request_id
    if multipart:
        return _multipart(request_id, outcome, total_ms)
    (item,) = outcome.results
    if isinstance(item, Failed):
        raise ErrorAnswer(item.error)
    return ClassifyAnswer(200, {}, _result(request_id, outcome, item, total_ms))


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


def _multipart(request_id: str, outcome: Classification, total_ms: float) -> ClassifyAnswer:
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
    return ClassifyAnswer(status, headers, MultiClassifyResult(request_id=request_id, results=entries))
