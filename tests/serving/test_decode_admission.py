"""The classifier refuses before any work: too many images waiting for a decode thread, a request
past its deadline, a model whose queue is full. In the serving core, so every front end has it.

The decode pool is a real one-thread pool whose thread the test holds, so images wait for it
exactly as long as the test says; bytes that are not an image show whether Pillow ever ran
(it would answer 400 invalid_image).
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from PIL import Image

from batchserve.model_repo.preprocess import prepare_image
from batchserve.serving.classifier import NO_DEADLINE, Classified, Classifier, Deadline, Failed, ImageInput
from batchserve.serving.config import ServingConfig
from batchserve.serving.errors import Overloaded
from batchserve.serving.knobs import KnobOverrides
from batchserve.serving.pressure import Bound, queue_refusal
from batchserve.serving.registry import LoadedModel, ModelRegistry

NOT_AN_IMAGE = ImageInput(b"these bytes are no image", content_type="image/png")


def png() -> ImageInput:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buffer, "PNG")
    return ImageInput(buffer.getvalue(), content_type="image/png")


@pytest.fixture
async def model() -> AsyncIterator[LoadedModel]:
    registry = ModelRegistry(ServingConfig(simulate_model="1+0"))
    await registry.load_configured()
    try:
        yield registry.find("simulated")
    finally:
        await registry.close(timeout=5)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(1, thread_name_prefix="decode-test")
    yield executor
    executor.shutdown(wait=False)


@contextmanager
def held(pool: ThreadPoolExecutor) -> Iterator[threading.Event]:
    """The pool's one thread is busy until the event is set (at the latest when the block ends)."""
    go, started = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        go.wait(60)

    pool.submit(hold)
    assert started.wait(10), "the decode thread never started"
    try:
        yield go
    finally:
        go.set()


async def until(check, what: str) -> None:
    async with asyncio.timeout(20):
        while not check():
            await asyncio.sleep(0.002)


async def test_images_past_the_pending_bound_are_refused_before_any_work(model, pool) -> None:
    classifier = Classifier(pool, Bound(2))
    with held(pool) as go:
        waiting = asyncio.create_task(classifier.classify_images(model, [png(), png()], 3, NO_DEADLINE))
        await until(lambda: classifier.pending_decodes.in_use == 2, "two images waiting")
        with pytest.raises(Overloaded) as refused:
            await classifier.classify_images(model, [png()], 3, NO_DEADLINE)
        go.set()
        outcome = await waiting
    assert refused.value.status == 503 and refused.value.code == "overloaded"
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert all(isinstance(r, Classified) for r in outcome.results) and len(outcome.results) == 2
    assert classifier.pending_decodes.in_use == 0 and classifier.pending_decodes.refused_total == 1


async def test_a_request_already_past_its_deadline_is_not_handed_to_the_pool(model, pool) -> None:
    classifier = Classifier(pool, Bound(8))
    with held(pool):  # had the image been handed to the pool, it would wait for the held thread
        outcome = await classifier.classify_images(model, [NOT_AN_IMAGE], 3, Deadline(time.monotonic() - 1))
    (result,) = outcome.results
    assert isinstance(result, Failed) and result.stage == "decode" and result.decoded is None
    assert (result.error.status, result.error.code) == (504, "deadline_exceeded")
    assert classifier.pending_decodes.in_use == 0


async def test_an_image_whose_deadline_passes_in_the_pool_queue_is_dropped_unread(model, pool) -> None:
    classifier = Classifier(pool, Bound(8))
    deadline = Deadline(time.monotonic() + 0.05)
    with held(pool) as go:
        task = asyncio.create_task(classifier.classify_images(model, [NOT_AN_IMAGE, png()], 3, deadline))
        await until(lambda: classifier.pending_decodes.in_use == 2, "both images handed to the pool")
        await until(deadline.passed, "the deadline to pass")
        go.set()
        outcome = await task
    assert [(r.error.code, r.decoded) for r in outcome.results if isinstance(r, Failed)] == [
        ("deadline_exceeded", None), ("deadline_exceeded", None)]
    assert model.batcher.stats.requests_total == 0  # nothing reached the model either
    assert classifier.pending_decodes.in_use == 0


async def test_a_request_within_its_deadline_is_decoded_as_before(model, pool) -> None:
    classifier = Classifier(pool, Bound(8))
    outcome = await classifier.classify_images(model, [NOT_AN_IMAGE, png()], 3, Deadline(time.monotonic() + 60))
    bad, good = outcome.results
    assert isinstance(bad, Failed) and bad.error.code == "invalid_image"
    assert isinstance(good, Classified) and len(good.predictions) == 3


async def test_a_full_queue_is_known_before_any_work() -> None:
    """A device that takes a minute per batch: one sample runs, two wait, and the queue holds two."""
    knobs = KnobOverrides({"max_queue_size": 2, "max_batch_size": 1, "max_inflight_batches": 1})
    registry = ModelRegistry(ServingConfig(simulate_model="60000+0", knobs=knobs))
    await registry.load_configured()
    model = registry.find("simulated")
    tensor = prepare_image(png().data, model.preprocess).tensor
    try:
        assert queue_refusal(model) is None
        running = asyncio.create_task(model.batcher.submit([tensor]))
        await until(lambda: model.batcher.stats.inflight_batches == 1, "a batch to run")
        assert queue_refusal(model, 2) is None
        queued = asyncio.create_task(model.batcher.submit([tensor, tensor]))
        await until(lambda: model.batcher.stats.queue_depth == 2, "the queue to fill")
        refusal = queue_refusal(model)
        running.cancel()
        queued.cancel()
    finally:
        await registry.close(timeout=0.1)
    assert refusal is not None and refusal.code == "overloaded" and refusal.status == 503
    assert "2 of 2 samples queued" in refusal.message and int(refusal.headers["Retry-After"]) >= 1
    assert model.batcher.stats.rejected_total == 0  # asking is not a refusal by the batcher


def test_an_idle_bound_takes_any_count_and_a_busy_one_only_what_fits() -> None:
    bound = Bound(2)
    assert bound.try_take(5)  # a request larger than the bound is slow, never impossible
    assert not bound.try_take(1)
    bound.release(5)
    assert bound.try_take(2) and not bound.try_take(1)
    assert bound.refused_total == 2
