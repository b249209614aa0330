"""Cancellation by callers, and shutdown: close() drains, refuses new work, and gives up after its timeout."""

from __future__ import annotations

import asyncio

import pytest

from batchserve.batching import Batcher, BatcherClosed, BatchingConfig
from tests.batching.batcher_fakes import CostModel, GatedModel, settle


async def test_cancel_before_dispatch_withdraws_the_items() -> None:
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=8, max_inflight_batches=1))
    blocker = asyncio.create_task(batcher.submit([1]))
    await settle()
    before = asyncio.create_task(batcher.submit([2]))
    cancelled = asyncio.create_task(batcher.submit([666, 667]))
    after = asyncio.create_task(batcher.submit([3]))
    await settle()
    assert batcher.stats.queue_depth == 4
    cancelled.cancel()
    await settle()
    assert cancelled.cancelled()
    assert batcher.stats.queue_depth == 2 and batcher.stats.queued_requests == 2
    assert batcher.stats.cancelled_total == 1
    model.open()
    assert [(await t).results for t in (blocker, before, after)] == [[2], [4], [6]]
    assert model.calls == [[1], [2, 3]]  # the cancelled items never reached the model
    await batcher.close()


async def test_cancel_at_the_head_of_a_waiting_batch() -> None:
    model = GatedModel()
    model.open()
    # The delay holds the batch open; the oldest request leaves; the newer one still gets served.
    batcher = Batcher(model, BatchingConfig(max_batch_size=2, max_queue_delay_ms=600_000))
    oldest = asyncio.create_task(batcher.submit([1]))
    await settle()
    oldest.cancel()
    await settle()
    newer = asyncio.create_task(batcher.submit([2]))
    partner = asyncio.create_task(batcher.submit([3]))
    assert [(await t).results for t in (newer, partner)] == [[4], [6]]
    assert model.calls == [[2, 3]]
    await batcher.close()


async def test_cancel_during_compute_discards_only_that_result() -> None:
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=8))
    leaving = asyncio.create_task(batcher.submit([1]))
    staying = asyncio.create_task(batcher.submit([2]))
    await settle()
    assert model.calls == [[1, 2]]
    leaving.cancel()
    await settle()
    model.open()
    assert (await staying).results == [4]
    with pytest.raises(asyncio.CancelledError):
        await leaving
    stats = batcher.stats
    assert stats.cancelled_total == 1 and stats.failed_batches_total == 0 and stats.batches_total == 1
    assert (await batcher.submit([5])).results == [10]
    await batcher.close()


async def test_cancel_a_split_request_midway_drops_its_rest() -> None:
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=2, max_inflight_batches=1))
    big = asyncio.create_task(batcher.submit([1, 2, 3, 4, 5]))
    await settle()
    assert model.calls == [[1, 2]]
    assert batcher.stats.queue_depth == 3
    big.cancel()
    await settle()
    assert batcher.stats.queue_depth == 0
    model.open()
    assert (await batcher.submit([9])).results == [18]
    assert model.calls == [[1, 2], [9]]
    await batcher.close()


async def test_close_drains_queued_and_running_work_and_refuses_new_work() -> None:
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=2, max_inflight_batches=1, max_queue_delay_ms=600_000))
    running = asyncio.create_task(batcher.submit([1, 2]))
    await settle()
    queued = asyncio.create_task(batcher.submit([3]))  # would wait 10 minutes for company, but not on close
    await settle()
    closing = asyncio.create_task(batcher.close())
    await settle()
    assert batcher.closing and not closing.done()
    with pytest.raises(BatcherClosed, match="shutting down"):
        await batcher.submit([4])
    model.open()
    await closing
    assert (await running).results == [2, 4]
    assert (await queued).results == [6]
    await batcher.close()  # idempotent
    with pytest.raises(BatcherClosed):
        await batcher.submit([5])
    assert model.calls == [[1, 2], [3]]


async def test_close_past_its_timeout_fails_the_leftovers() -> None:
    model = GatedModel()  # never opened: the batch hangs
    batcher = Batcher(model, BatchingConfig(max_batch_size=1, max_inflight_batches=1))
    running = asyncio.create_task(batcher.submit([1]))
    queued = asyncio.create_task(batcher.submit([2]))
    await settle()
    await batcher.close(timeout=0.01)
    for task in (running, queued):
        with pytest.raises(BatcherClosed):
            await task
    assert model.calls == [[1]]
    stats = batcher.stats
    assert stats.queue_depth == 0 and stats.inflight_batches == 0
    await batcher.close(timeout=0.01)  # still idempotent


async def test_close_before_any_work_and_twice_at_once() -> None:
    batcher = Batcher(CostModel(a=0.0, b=0.0))
    await batcher.close()
    with pytest.raises(BatcherClosed):
        await batcher.submit([1])
    busy = Batcher(CostModel(a=0.001, b=0.0))
    work = [asyncio.create_task(busy.submit([k])) for k in range(10)]
    await settle(2)
    await asyncio.gather(busy.close(), busy.close())
    assert [(await t).results for t in work] == [[2 * k] for k in range(10)]


async def test_start_is_idempotent_and_binds_one_loop() -> None:
    batcher = Batcher(CostModel(a=0.0, b=0.0), name="idem")
    batcher.start()
    batcher.start()
    assert (await batcher.submit([1])).results == [2]
    await batcher.close()
    fresh = Batcher(CostModel())
    await fresh.close()
    with pytest.raises(BatcherClosed):
        fresh.start()
