"""Running a planned V2 request through the shared hot path, and shaping its outputs.

Samples go to `model.batcher` through the same Classifier as /v1/classify, so V1 and V2 requests
ride the same batches, and each sample becomes one event. A V2 request answers all or nothing:
the first image that cannot be decoded fails the request (Triton has no per-element errors).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from batchserve.model_repo.topk import softmax, top_k
from batchserve.server.errors import ErrorAnswer, ErrorInfo, describe
from batchserve.server.inference import Classified, Deadline, DecodedImage, Failed, ImageInput, Prediction
from batchserve.server.registry import LoadedModel
from batchserve.server.request_context import Caller
from batchserve.server.state import AppState
from batchserve.server.v2.codec import OutputTensor
from batchserve.server.v2.datatypes import BYTES
from batchserve.server.v2.plan import PROBABILITIES_OUTPUT, OutputPlan, Plan

ROUTE = "v2"


@dataclass(frozen=True)
class Scores:
    logits: np.ndarray      # float32 [N, C]
    top1: list[Prediction]  # per sample, for events


def _elapsed_ms(started: float) -> float:
    return (time.monotonic() - started) * 1000.0


async def run_plan(
    state: AppState, model: LoadedModel, plan: Plan, deadline: Deadline, caller: Caller, started: float
) -> list[OutputTensor]:
    scores = await (_run_images(state, model, plan, deadline, caller, started) if plan.images is not None
                    else _run_tensor(state, model, plan, deadline, caller, started))
    return build_outputs(model, plan.outputs, scores.logits)


async def _run_tensor(
    state: AppState, model: LoadedModel, plan: Plan, deadline: Deadline, caller: Caller, started: float
) -> Scores:
    assert plan.tensor is not None
    samples = list(plan.tensor)  # views of one contiguous array: no copy per sample
    try:
        ranked, queue_ms, infer_ms, batch_size = await state.classifier.infer(model, samples, 1, deadline)
    except Exception as exc:
        state.recorder.tensor_failure(caller, ROUTE, model.name, model.version, len(samples), describe(exc),
                                      _elapsed_ms(started))
        raise
    top1 = [predictions[0] for _, predictions in ranked]
    state.recorder.tensor_results(caller, ROUTE, model.name, model.version, top1, _elapsed_ms(started),
                                  queue_ms=queue_ms, inference_ms=infer_ms, batch_size=batch_size)
    return Scores(np.stack([logits for logits, _ in ranked]), top1)


async def _run_images(
    state: AppState, model: LoadedModel, plan: Plan, deadline: Deadline, caller: Caller, started: float
) -> Scores:
    assert plan.images is not None
    images = [ImageInput(data) for data in plan.images]
    decoded = await state.classifier.decode_all(model, images)
    failed = [(i, d) for i, d in enumerate(decoded) if isinstance(d, Failed)]
    if failed:
        # Only the images that failed were attempted; the rest never reached the model.
        state.recorder.results(caller, ROUTE, model.name, model.version, [d for _, d in failed], _elapsed_ms(started))
        index, first = failed[0]
        info = first.error
        raise ErrorAnswer(ErrorInfo(info.status, info.code, f"image {index}: {info.message}", info.headers))
    good: list[DecodedImage] = [d for d in decoded if isinstance(d, DecodedImage)]
    try:
        ranked, queue_ms, infer_ms, batch_size = await state.classifier.infer(
            model, [d.prepared.tensor for d in good], 1, deadline
        )
    except Exception as exc:
        info = describe(exc)
        state.recorder.results(caller, ROUTE, model.name, model.version,
                               [Failed(img, info, d) for img, d in zip(images, good, strict=True)], _elapsed_ms(started))
        raise
    results = [Classified(img, d, predictions, logits, queue_ms, infer_ms, batch_size)
               for img, d, (logits, predictions) in zip(images, good, ranked, strict=True)]
    state.recorder.results(caller, ROUTE, model.name, model.version, results, _elapsed_ms(started))
    return Scores(np.stack([r.logits for r in results]), [r.predictions[0] for r in results])


def classification_strings(values: np.ndarray, k: int, labels: list[str]) -> list[bytes]:
    """Triton's classification form, row by row: "<value>:<index>:<label>", best first.
    The value prints as C++'s std::to_string does (six decimals), as Triton's own server answers."""
    out = []
    for row in values:
        out.extend(f"{value:.6f}:{index}:{labels[index]}".encode() for index, value in top_k(row, k))
    return out


def build_outputs(model: LoadedModel, plans: list[OutputPlan], logits: np.ndarray) -> list[OutputTensor]:
    logits = np.asarray(logits, dtype=np.float32)
    n, classes = logits.shape
    probabilities: np.ndarray | None = None
    outputs = []
    for plan in plans:
        if plan.name == PROBABILITIES_OUTPUT:
            if probabilities is None:
                probabilities = softmax(logits, axis=1).astype(np.float32)
            values = probabilities
        else:
            values = logits
        if plan.classification is not None:
            strings = classification_strings(values, plan.classification, model.labels)
            outputs.append(OutputTensor(plan.name, BYTES, [n, plan.classification], strings, plan.binary))
        else:
            outputs.append(OutputTensor(plan.name, "FP32", [n, classes], values, plan.binary))
    return outputs
