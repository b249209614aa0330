"""The hot path shared by every API: decode in a thread pool, batch, infer, rank.

All images of one request go to the batcher as ONE submission, so a multipart upload of five
files rides the same batch (or is split across consecutive ones) instead of five queue trips.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from batchserve.model_repo.image_formats import check_declared_type
from batchserve.model_repo.preprocess import PreparedImage, prepare_image
from batchserve.model_repo.topk import softmax, top_k
from batchserve.server.errors import ErrorInfo, InvalidParameter, describe
from batchserve.server.registry import LoadedModel

log = logging.getLogger("batchserve.inference")


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class DecodedImage:
    prepared: PreparedImage
    sha256: str
    size_bytes: int


@dataclass
class Prediction:
    class_id: int
    label: str
    score: float


@dataclass
class Classified:
    """One image's answer, with what the event store wants to know about it."""

    image: ImageInput
    decoded: DecodedImage
    predictions: list[Prediction]
    logits: np.ndarray
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class Failed:
    image: ImageInput | None
    error: ErrorInfo
    decoded: DecodedImage | None = None


@dataclass
class Deadline:
    """Absolute monotonic deadline for one request (None: no deadline)."""

    at: float | None

    @classmethod
    def for_request(cls, model: LoadedModel, timeout_ms: float | None, started: float) -> Deadline:
        if timeout_ms is not None:
            if not 0 < timeout_ms:
                raise InvalidParameter(f"timeout_ms must be a positive number of milliseconds, not {timeout_ms:g}")
            budget = min(timeout_ms, model.limits.max_timeout_ms)
        else:
            budget = model.limits.default_timeout_ms
        return cls(started + budget / 1000.0 if budget > 0 else None)


TIMEOUT_HEADER = "x-request-timeout-ms"


def header_timeout_ms(headers: Mapping[str, str]) -> float | None:
    """The client's deadline from `X-Request-Timeout-Ms` (None when absent)."""
    value = headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidParameter(f"X-Request-Timeout-Ms must be a number of milliseconds, not {value!r}") from None


def _decode(image: ImageInput, model: LoadedModel) -> DecodedImage:
    """Runs in a worker thread: Pillow and hashlib release the GIL for the heavy parts."""
    check_declared_type(image.content_type, image.data)
    prepared = prepare_image(image.data, model.preprocess)
    return DecodedImage(prepared, hashlib.sha256(image.data).hexdigest(), len(image.data))


def validate_top_k(top_k_value: int, model: LoadedModel) -> int:
    if not 1 <= top_k_value <= model.classes:
        raise InvalidParameter(f"top_k must be between 1 and {model.classes}, not {top_k_value}")
    return top_k_value


@dataclass
class Classifier:
    decode_pool: Executor

    async def decode_all(self, model: LoadedModel, images: Sequence[ImageInput]) -> list[DecodedImage | Failed]:
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(self.decode_pool, _decode, image, model) for image in images]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        decoded: list[DecodedImage | Failed] = []
        for image, outcome in zip(images, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                info = describe(outcome)
                if info.code == "internal":
                    log.error("decoding failed unexpectedly", exc_info=outcome)
                decoded.append(Failed(image, info))
            else:
                decoded.append(outcome)
        return decoded

    async def infer(
        self, model: LoadedModel, samples: list[np.ndarray], k: int, deadline: Deadline
    ) -> tuple[list[tuple[np.ndarray, list[Prediction]]], float, float, int]:
        """Batch the samples; returns ((logits, top-k) per sample, queue ms, inference ms, batch size)."""
        outcome = await model.batcher.submit(samples, deadline=deadline.at)
        ranked = []
        for logits in outcome.results:
            probs = softmax(logits)
            ranked.append((logits, [Prediction(c, model.labels[c], s) for c, s in top_k(probs, k)]))
        return ranked, outcome.queue_s * 1000.0, outcome.compute_s * 1000.0, outcome.batch_size

    async def classify(
        self, model: LoadedModel, images: Sequence[ImageInput], k: int, deadline: Deadline
    ) -> list[Classified | Failed]:
        """Each image's answer, in order; one image's failure does not fail the others, but a
        batching failure (queue full, deadline, shutdown) fails every image of the request."""
        decoded = await self.decode_all(model, images)
        good = [d for d in decoded if isinstance(d, DecodedImage)]
        if not good:
            return list(decoded)  # type: ignore[arg-type]
        try:
            ranked, queue_ms, infer_ms, batch_size = await self.infer(
                model, [d.prepared.tensor for d in good], k, deadline
            )
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a per-image error, the request still answers
            info = describe(exc)
            if info.status >= 500 and info.code == "internal":
                log.exception("batch for %s v%d failed", model.name, model.version)
            return [d if isinstance(d, Failed) else Failed(img, info, d) for img, d in zip(images, decoded, strict=True)]
        answers = iter(ranked)
        results: list[Classified | Failed] = []
        for image, item in zip(images, decoded, strict=True):
            if isinstance(item, Failed):
                results.append(item)
            else:
                logits, predictions = next(answers)
                results.append(Classified(image, item, predictions, logits, queue_ms, infer_ms, batch_size))
        return results
