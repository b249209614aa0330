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

With a result cache (serving/cache.py), an image seen before is answered from its cached scores
and never decoded or batched; with fallbacks (serving/fallback.py), images whose batch the model
refused or failed are answered by its fallback instead. Both belong here, so every front end
(the HTTP server and the queue worker) has them.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from batchserve.serving.cache import CachedScores, CacheHit, ResultCache, digests_of
from batchserve.serving.drift_inputs import mean_brightness
from batchserve.serving.errors import ErrorInfo, InvalidParameter, describe
from batchserve.serving.fallback import Fallbacks, StandIn, fallback_reason, same_input
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
    brightness: float | None = None  # mean 0-255 pixel value of the crop, for drift monitoring


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
    cached: CacheHit | None = None  # answered from the result cache (never decoded: `sent` is the image)
    stand_in: StandIn | None = None  # answered by the request's fallback model, not the model it asked

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

    def answered_by(self, result: Classified) -> LoadedModel:
        """The model that really answered a sample: a StandIn when a fallback did."""
        return result.stand_in or self.model


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


def _decode(image: ImageInput, model: LoadedModel, deadline: Deadline, sha256: str | None = None) -> DecodedInput:
    """Runs in a worker thread: Pillow and hashlib release the GIL for the heavy parts. `sha256`:
    the image's digest when the cache computed it already."""
    if deadline.passed():  # it waited in the pool's queue past its deadline: its answer is already 504
        raise _Expired
    check_declared_type(image.content_type, image.data)
    prepared = prepare_image(image.data, model.preprocess)
    return DecodedInput(image, prepared, sha256 or hashlib.sha256(image.data).hexdigest(),
                        mean_brightness(prepared.tensor, model.preprocess))


def _batch_failed(outcome: Classification) -> bool:
    return any(isinstance(r, Failed) and r.stage == "batch" for r in outcome.results)


def _ranked(model: LoadedModel, logits: np.ndarray, k: int) -> list[Prediction]:
    return [Prediction(c, model.labels[c], s) for c, s in top_k(softmax(logits), k)]


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
    cache: ResultCache | None = None
    fallbacks: Fallbacks | None = None

    async def decode(
        self, model: LoadedModel, images: Sequence[ImageInput], deadline: Deadline = NO_DEADLINE,
        *, digests: Sequence[str] | None = None, positions: Sequence[int] | None = None,
    ) -> list[DecodedInput | Failed]:
        """Every image decoded and preprocessed for `model`, in order; an image that cannot be is a Failed
        (at its place in `positions`, the images' places in their request: by default 0, 1, ...).

        Raises `Overloaded` before any work when the images would not fit under `pending_decodes`."""
        places = positions if positions is not None else range(len(images))
        if deadline.passed():
            return [Failed(position, image, EXPIRED, "decode") for position, image in zip(places, images, strict=True)]
        pending = self.pending_decodes
        if not pending.try_take(len(images)):
            raise bound_refusal("images waiting for decoding", pending)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[DecodedInput]] = []
        try:
            for index, image in enumerate(images):
                sha256 = digests[index] if digests is not None else None
                future = loop.run_in_executor(self.decode_pool, _decode, image, model, deadline, sha256)
                future.add_done_callback(lambda _: pending.release())
                futures.append(future)
        except BaseException:  # the pool is shut down: places not handed to it are free again
            pending.release(len(images) - len(futures))
            raise
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        decoded: list[DecodedInput | Failed] = []
        for position, image, outcome in zip(places, images, outcomes, strict=True):
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
        *, all_or_nothing: bool = False, fall_back: bool = True,
    ) -> Classification:
        """Each image's answer, in order. One image's decoding failure does not fail the others,
        but a batching failure (queue full, deadline, shutdown) fails every image of the request
        (that its fallback, when it has one and `fall_back` allows, does not answer instead).

        With `all_or_nothing` (a protocol without per-sample errors), images go to the model only
        when every one decoded; otherwise the results hold just the images that failed, since the
        others were never attempted. Raises `Overloaded` before any work (see `decode`).

        A `model` that is a StandIn (a fallback answering for a primary that is not loaded) reads
        and writes no cache, and its own fallback is never asked."""
        standing_in = isinstance(model, StandIn)
        cache = None if standing_in else self.cache
        if cache is None:
            outcome = await self._fresh(model, images, k, deadline, all_or_nothing)
        else:
            outcome = await self._cached(cache, model, images, k, deadline, all_or_nothing)
        fallbacks = self.fallbacks
        if fallbacks is not None:
            if isinstance(model, StandIn):
                answered = sum(1 for r in outcome.results if isinstance(r, Classified))
                fallbacks.count(model, answered, len(outcome.results) - answered)
            elif fall_back and _batch_failed(outcome):
                outcome = await self._instead(fallbacks, outcome, k, deadline)
        return outcome

    async def _fresh(
        self, model: LoadedModel, images: Sequence[ImageInput], k: int, deadline: Deadline, all_or_nothing: bool,
        digests: Sequence[str] | None = None, positions: Sequence[int] | None = None,
    ) -> Classification:
        """Decode, batch, rank: `classify_images` without cache or fallback. `positions`: the
        images' places in their request, when they are some of its images only."""
        decoded = await self.decode(model, images, deadline, digests=digests, positions=positions)
        failed = [d for d in decoded if isinstance(d, Failed)]
        if all_or_nothing and failed:
            return Classification(model, list(failed))
        good = [d for d in decoded if isinstance(d, DecodedInput)]
        answer = await self._run(model, [d.prepared.tensor for d in good], k, deadline)
        index = iter(range(len(good)))
        results: list[SampleResult] = []
        places = positions if positions is not None else range(len(decoded))
        for position, item in zip(places, decoded, strict=True):
            if isinstance(item, Failed):
                results.append(item)
            elif isinstance(answer, ErrorInfo):
                results.append(Failed(position, item.image, answer, "batch", item))
            else:
                results.append(answer.sample(next(index), position, item))
        return Classification(model, results)

    async def _cached(
        self, cache: ResultCache, model: LoadedModel, images: Sequence[ImageInput], k: int, deadline: Deadline,
        all_or_nothing: bool,
    ) -> Classification:
        """Images found in the cache answered from it; the others classified, and their answers kept."""
        digests = await digests_of([image.data for image in images], self.decode_pool)
        found = await cache.lookup(model, digests)
        misses = [position for position, scores in enumerate(found) if scores is None]
        fresh: list[SampleResult] = []
        if misses:
            outcome = await self._fresh(model, [images[i] for i in misses], k, deadline, all_or_nothing,
                                        [digests[i] for i in misses], misses)
            if all_or_nothing and outcome.failures:
                return outcome
            fresh = outcome.results
            await cache.keep(model, [
                (r.decoded.sha256, CachedScores.of(r.logits, r.decoded.prepared.width, r.decoded.prepared.height,
                                                   r.decoded.prepared.format))
                for r in fresh if isinstance(r, Classified) and r.decoded is not None
            ])
        answers = iter(fresh)
        results: list[SampleResult] = []
        for position, scores in enumerate(found):
            if scores is None:
                results.append(next(answers))
            else:
                hit = CacheHit(digests[position], scores)
                results.append(Classified(position, None, _ranked(model, scores.logits, k), scores.logits, 0.0, 0.0, 0,
                                          sent=images[position], cached=hit))
        return Classification(model, results)

    async def _instead(self, fallbacks: Fallbacks, outcome: Classification, k: int, deadline: Deadline
                       ) -> Classification:
        """The samples whose batch failed for a reason a fallback covers, answered by the model's
        fallback when it can; the others (and those it cannot answer) as they were."""
        failed = [r for r in outcome.results if isinstance(r, Failed) and r.stage == "batch" and r.image is not None]
        reason = fallback_reason(failed[0].error) if failed else None  # one submission: one error for all
        if reason is None:
            return outcome
        primary = outcome.model
        stand_in = fallbacks.stand_in(primary.name, reason, k)
        if stand_in is None:
            if fallbacks.target(primary.name) is not None:
                fallbacks.stats.unanswered[(primary.name, reason)] += len(failed)
            return outcome
        log.info("%s v%d: %d image(s) answered by its fallback %s (%s)", primary.name, primary.version, len(failed),
                 stand_in.name, reason)
        answers = await self._answers_of(stand_in, primary, failed, k, deadline)
        fallbacks.count(stand_in, len(answers), len(failed) - len(answers))
        results = [answers.get(r.position, r) if isinstance(r, Failed) else r for r in outcome.results]
        return Classification(primary, results)

    async def _answers_of(self, stand_in: StandIn, primary: LoadedModel, failed: list[Failed], k: int,
                          deadline: Deadline) -> dict[int, Classified]:
        """The stand-in's answers for the failed samples, by position (those it could answer)."""
        decoded = [f.decoded for f in failed]
        if same_input(primary, stand_in) and all(d is not None for d in decoded):
            tensors = [d.prepared.tensor for d in decoded if d is not None]
            answer = await self._run(stand_in, tensors, k, deadline)
            if isinstance(answer, ErrorInfo):
                return {}
            samples = [answer.sample(i, f.position, f.decoded) for i, f in enumerate(failed)]
        else:  # prepared for the primary's input: the stand-in decodes them its own way
            images = [f.image for f in failed if f.image is not None]
            outcome = await self._fresh(stand_in, images, k, deadline, False, positions=[f.position for f in failed])
            samples = [r for r in outcome.results if isinstance(r, Classified)]
        return {c.position: dataclasses.replace(c, stand_in=stand_in) for c in samples}

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
