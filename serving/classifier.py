"""The hot path every front end shares: decode in a thread pool, batch, infer, rank.

All samples of one request go to the batcher as ONE submission, so a multipart upload of five
files rides the same batch (or is split across consecutive ones) instead of five queue trips.
Classification never raises for what a sample or the batcher did: it returns one
`Classification` whose results say, per sample, what it was classified as or why it failed, and
the front end records that outcome once and answers from it.

Two refusals come before any work: a request whose images would wait behind too many others for
a decode thread raises `Overloaded` (the bound is the classifier's, so every front end has it), and
an image whose request is past its deadline is dropped unread, whether that shows before it is
handed to the pool or when a decode thread picks it up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from batchserve.model_repo.image_formats import check_declared_type
from batchserve.model_repo.preprocess import PreparedImage, prepare_image
from batchserve.model_repo.topk import softmax, top_k
from batchserve.serving.errors import ErrorInfo, InvalidParameter, describe
from batchserve.serving.pressure import MAX_PENDING_DECODES, Bound, bound_refusal
from batchserve.serving.registry import LoadedModel

log = logging.getLogger("batchserve.classifier")


@dataclass(frozen=True)
class ImageInput:
    """An encoded image as a client sent it."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True)
class DecodedInput:
    """An image ready for the model, with what the event store wants to know about its bytes."""

    image: ImageInput
    prepared: PreparedImage
    sha256: str


@dataclass(frozen=True)
class Prediction:
    class_id: int
    label: str
    score: float


@dataclass(frozen=True)
class Classified:
    """One sample's answer. `decoded` is None for a sample sent as a ready tensor."""

    position: int  # index among the request's samples
    decoded: DecodedInput | None
    predictions: list[Prediction]
    logits: np.ndarray
    queue_ms: float
    inference_ms: float
    batch_size: int
    # Answered by a queue worker, which decoded the image and wrote the sample's event itself (see
    # jobs/web_tier.py): `sent` is the image as the client sent it.
    recorded_elsewhere: bool = False
    sent: ImageInput | None = None

    @property
    def image(self) -> ImageInput | None:
        return self.decoded.image if self.decoded is not None else self.sent


@dataclass(frozen=True)
class Failed:
    """One sample that got no answer: its image could not be decoded, or its batch failed."""

    position: int
    image: ImageInput | None
    error: ErrorInfo
    stage: Literal["decode", "batch"]
    decoded: DecodedInput | None = None
    recorded_elsewhere: bool = False  # as for Classified


SampleResult = Classified | Failed


@dataclass(frozen=True)
class Classification:
    """What one request's samples came to, in request order (see `Classifier.classify_images` for
    the one exception). The single thing a front end hands to the event recorder."""

    model: LoadedModel
    results: list[SampleResult]

    @property
    def failures(self) -> list[Failed]:
        return [r for r in self.results if isinstance(r, Failed)]


@dataclass(frozen=True)
class BatchAnswer:
    """The batcher's answer for one submission: each sample's logits and top k, and how it ran."""

    logits: list[np.ndarray]
    predictions: list[list[Prediction]]
    queue_ms: float
    inference_ms: float
    batch_size: int

    def sample(self, index: int, position: int, decoded: DecodedInput | None) -> Classified:
        """The answer for the submission's `index`-th sample, the request's `position`-th."""
        return Classified(position, decoded, self.predictions[index], self.logits[index], self.queue_ms,
                          self.inference_ms, self.batch_size)


@dataclass(frozen=True)
class Deadline:
    """Absolute monotonic deadline for one request (None: no deadline)."""

    at: float | None

    @classmethod
    def for_request(cls, model: LoadedModel, timeout_ms: float | None, started: float) -> Deadline:
        if timeout_ms is not None:
            if not timeout_ms > 0:
                raise InvalidParameter(f"timeout_ms must be a positive number of milliseconds, not {timeout_ms:g}")
            budget = min(timeout_ms, model.limits.max_timeout_ms)
        else:
            budget = model.limits.default_timeout_ms
        return cls(started + budget / 1000.0 if budget > 0 else None)

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


NO_DEADLINE = Deadline(None)


class _Expired(Exception):
    """Raised in a decode thread for an image whose request's deadline passed while it waited."""


EXPIRED = ErrorInfo(504, "deadline_exceeded", "the request's deadline passed before its image was decoded")


def validate_top_k(top_k_value: int, model: LoadedModel) -> int:
    if not 1 <= top_k_value <= model.classes:
        raise InvalidParameter(f"top_k must be between 1 and {model.classes}, not {top_k_value}")
    return top_k_value


def _decode(image: ImageInput, model: LoadedModel, deadline: Deadline) -> DecodedInput:
    """Runs in a worker thread: Pillow and hashlib release the GIL for the heavy parts."""
    if deadline.passed():  # it waited in the pool's queue past its deadline: its answer is already 504
        raise _Expired
    check_declared_type(image.content_type, image.data)
    prepared = prepare_image(image.data, model.preprocess)
    return DecodedInput(image, prepared, hashlib.sha256(image.data).hexdigest())


def _described(exc: BaseException, what: str) -> ErrorInfo:
    info = describe(exc)
    if info.is_bug:
        log.error("%s failed unexpectedly", what, exc_info=exc)
    return info


@dataclass
class Classifier:
    decode_pool: Executor
    pending_decodes: Bound = field(default_factory=lambda: Bound(MAX_PENDING_DECODES))
    """Images handed to the decode pool and not finished yet (waiting for a thread, or decoding)."""

    async def decode(
        self, model: LoadedModel, images: Sequence[ImageInput], deadline: Deadline = NO_DEADLINE
    ) -> list[DecodedInput | Failed]:
        """Every image decoded and preprocessed for `model`, in order; an image that cannot be is a Failed.

        Raises `Overloaded` before any work when the images would not fit under `pending_decodes`."""
        if deadline.passed():
            return [Failed(position, image, EXPIRED, "decode") for position, image in enumerate(images)]
        pending = self.pending_decodes
        if not pending.try_take(len(images)):
            raise bound_refusal("images waiting for decoding", pending)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[DecodedInput]] = []
        try:
            for image in images:
                future = loop.run_in_executor(self.decode_pool, _decode, image, model, deadline)
                future.add_done_callback(lambda _: pending.release())
                futures.append(future)
        except BaseException:  # the pool is shut down: places not handed to it are free again
            pending.release(len(images) - len(futures))
            raise
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        decoded: list[DecodedInput | Failed] = []
        for position, (image, outcome) in enumerate(zip(images, outcomes, strict=True)):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, _Expired):
                decoded.append(Failed(position, image, EXPIRED, "decode"))
            elif isinstance(outcome, BaseException):
                decoded.append(Failed(position, image, _described(outcome, "decoding"), "decode"))
            else:
                decoded.append(outcome)
        return decoded

    async def classify_images(
        self, model: LoadedModel, images: Sequence[ImageInput], k: int, deadline: Deadline,
        *, all_or_nothing: bool = False,
    ) -> Classification:
        """Each image's answer, in order. One image's decoding failure does not fail the others,
        but a batching failure (queue full, deadline, shutdown) fails every image of the request.

        With `all_or_nothing` (a protocol without per-sample errors), images go to the model only
        when every one decoded; otherwise the results hold just the images that failed, since the
        others were never attempted. Raises `Overloaded` before any work (see `decode`)."""
        decoded = await self.decode(model, images, deadline)
        failed = [d for d in decoded if isinstance(d, Failed)]
        if all_or_nothing and failed:
            return Classification(model, list(failed))
        good = [d for d in decoded if isinstance(d, DecodedInput)]
        answer = await self._run(model, [d.prepared.tensor for d in good], k, deadline)
        index = iter(range(len(good)))
        results: list[SampleResult] = []
        for position, item in enumerate(decoded):
            if isinstance(item, Failed):
                results.append(item)
            elif isinstance(answer, ErrorInfo):
                results.append(Failed(position, item.image, answer, "batch", item))
            else:
                results.append(answer.sample(next(index), position, item))
        return Classification(model, results)

    async def classify_tensors(
        self, model: LoadedModel, samples: Sequence[np.ndarray], k: int, deadline: Deadline
    ) -> Classification:
        """Samples already preprocessed into the model's input shape (as V2 clients may send them)."""
        answer = await self._run(model, list(samples), k, deadline)
        if isinstance(answer, ErrorInfo):
            return Classification(model, [Failed(i, None, answer, "batch") for i in range(len(samples))])
        return Classification(model, [answer.sample(i, i, None) for i in range(len(samples))])

    async def _run(
        self, model: LoadedModel, samples: list[np.ndarray], k: int, deadline: Deadline
    ) -> BatchAnswer | ErrorInfo:
        """The batcher's answer with each sample's top k, or the error that failed the whole submission
        (cancellation is not an Exception: it still propagates)."""
        if not samples:
            return BatchAnswer([], [], 0.0, 0.0, 0)
        try:
            outcome = await model.batcher.submit(samples, deadline=deadline.at)
            predictions = [
                [Prediction(c, model.labels[c], s) for c, s in top_k(softmax(logits), k)] for logits in outcome.results
            ]
        except Exception as exc:  # noqa: BLE001 - becomes each sample's error; the request still answers
            return _described(exc, f"batch for {model.name} v{model.version}")
        return BatchAnswer(list(outcome.results), predictions, outcome.queue_s * 1000.0, outcome.compute_s * 1000.0,
                           outcome.batch_size)
