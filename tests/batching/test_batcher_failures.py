"""What fails, for whom, and that the scheduler keeps going: queue caps, deadlines, model errors, bad input."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import pytest

from batchserve.batching import Batcher, BatchingConfig, BatchResultMismatch, DeadlineExceeded, QueueFull
from tests.batching.batcher_fakes import CostModel, GatedModel, VirtualClock, settle


async def test_queue_overflow_is_refused_at_once_and_enqueues_nothing() -> None:
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=8, max_queue_size=4, max_inflight_batches=1))
    running = asyncio.create_task(batcher.submit([1]))
    await settle()  # dispatched: the queue is empty again
    queued = asyncio.create_task(batcher.submit([2, 3, 4]))
    await settle()
    assert batcher.stats.queue_depth == 3

    with pytest.raises(QueueFull) as caught:
        await batcher.submit([5, 6])
    error = caught.value
    assert error.queued == 3 and error.capacity == 4 and error.requested == 2
    assert error.retry_after_s >= 1 and error.retry_after_s == math.ceil(error.retry_after_s)
    assert "queue full" in str(error)
    assert batcher.stats.queue_depth == 3
    assert batcher.stats.queued_requests == 1
    assert batcher.stats.rejected_total == 1

    model.open()
    assert (await running).results == [2]
    assert (await queued).results == [4, 6, 8]
    assert 5 not in model.seen  # the refused request never ran
    await batcher.close()


async def test_request_larger_than_the_whole_queue_is_refused_not_split() -> None:
    batcher = Batcher(CostModel(a=0.0, b=0.0), BatchingConfig(max_batch_size=2, max_queue_size=4))
    with pytest.raises(QueueFull, match="can never fit"):
        await batcher.submit(list(range(5)))
    # but one larger than a batch and within the queue is split and served
    assert (await batcher.submit(list(range(4)))).results == [0, 2, 4, 6]
    await batcher.close()


async def test_retry_after_follows_recent_throughput() -> None:
    clock = VirtualClock()
    model = GatedModel()
    config = BatchingConfig(max_batch_size=2, max_queue_size=2, max_inflight_batches=1)
    batcher = Batcher(model, config, clock=clock)
    model.open()
    await batcher.submit([0, 0])  # one batch of 2 in ~0 s of virtual time
    model.gate.clear()
    running = asyncio.create_task(batcher.submit([1, 1]))
    await settle()
    waiting = asyncio.create_task(batcher.submit([2, 2]))
    await settle()
    clock.advance(10.0)  # 2 samples finished 10 s ago, nothing since: about 0.2 samples/s
    with pytest.raises(QueueFull) as caught:
        await batcher.submit([3, 3])
    assert caught.value.retry_after_s == 10.0  # 2 samples to drain at 0.2/s
    model.open()
    await asyncio.gather(running, waiting)
    await batcher.close()


async def test_deadline_expires_while_the_slots_are_busy_and_the_model_never_sees_it() -> None:
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=8, max_inflight_batches=1))
    blocker = asyncio.create_task(batcher.submit([1]))
    await settle()
    doomed = asyncio.create_task(batcher.submit([666], deadline=time.monotonic() + 0.02))
    survivor = asyncio.create_task(batcher.submit([2]))
    with pytest.raises(DeadlineExceeded) as caught:
        await doomed  # the timer fails it although the model is still blocked
    assert caught.value.waited_s >= 0.0
    assert batcher.stats.queue_depth == 1 and batcher.stats.expired_total == 1
    model.open()
    assert (await blocker).results == [2] and (await survivor).results == [4]
    assert 666 not in model.seen
    await batcher.close()


async def test_deadline_checked_again_when_the_batch_is_cut() -> None:
    # The virtual clock jumps past the deadline while the real timer is far off: only the check at
    # dispatch can catch it, and it must, before the batch function runs.
    clock = VirtualClock()
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=8, max_inflight_batches=1), clock=clock)
    blocker = asyncio.create_task(batcher.submit([1]))
    await settle()
    doomed = asyncio.create_task(batcher.submit([666, 667], deadline=clock() + 3600))
    fine = asyncio.create_task(batcher.submit([3], deadline=clock() + 7200))
    await settle()
    clock.advance(3601)
    model.open()
    with pytest.raises(DeadlineExceeded) as caught:
        await doomed
    assert caught.value.waited_s == pytest.approx(3601)
    assert (await fine).results == [6]
    await blocker
    assert model.calls == [[1], [3]]
    await batcher.close()


async def test_deadline_already_past_is_refused_without_enqueueing() -> None:
    clock = VirtualClock()
    model = CostModel(a=0.0, b=0.0)
    batcher = Batcher(model, clock=clock)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit([1], deadline=clock() - 1)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit([1], deadline=clock())
    assert model.calls == [] and batcher.stats.expired_total == 2 and batcher.stats.requests_total == 0
    await batcher.close()


async def test_split_request_whose_rest_misses_the_deadline_fails_whole() -> None:
    clock = VirtualClock()
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=2, max_inflight_batches=1), clock=clock)
    big = asyncio.create_task(batcher.submit([1, 2, 3, 4], deadline=clock() + 3600))
    await settle()
    assert model.calls == [[1, 2]]
    clock.advance(7200)
    model.open()
    with pytest.raises(DeadlineExceeded):
        await big
    assert model.calls == [[1, 2]]  # the rest was dropped unrun
    assert batcher.stats.queue_depth == 0
    await batcher.close()


async def test_exception_fails_only_its_batch_and_the_next_batch_works() -> None:
    def transform(items: list[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("unlucky batch")
        return [x * 2 for x in items]

    model = GatedModel(transform)
    batcher = Batcher(model, BatchingConfig(max_batch_size=2, max_inflight_batches=1))
    tasks = [asyncio.create_task(batcher.submit([x])) for x in (1, 13, 2, 3)]
    await settle()
    model.open()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert model.calls == [[1, 13], [2, 3]]
    assert isinstance(outcomes[0], RuntimeError) and isinstance(outcomes[1], RuntimeError)
    assert str(outcomes[0]) == "unlucky batch"
    assert [o.results for o in outcomes[2:]] == [[4], [6]]  # type: ignore[union-attr]
    assert (await batcher.submit([5])).results == [10]
    stats = batcher.stats
    assert stats.failed_batches_total == 1 and stats.batches_total == 3
    await batcher.close()


async def test_sync_batch_function_exception_reaches_its_callers() -> None:
    def broken(items: list[int]) -> list[int]:
        raise ValueError(f"cannot run {len(items)} items")

    batcher = Batcher(broken)
    with pytest.raises(ValueError, match="cannot run 1 items"):
        await batcher.submit([1])
    with pytest.raises(ValueError):
        await batcher.submit([2])
    await batcher.close()


async def test_failure_of_one_part_fails_the_split_request_and_drops_its_rest() -> None:
    def transform(items: list[int]) -> list[int]:
        if 0 in items:
            raise RuntimeError("first part fails")
        return items

    model = GatedModel(transform)
    batcher = Batcher(model, BatchingConfig(max_batch_size=2, max_inflight_batches=1))
    big = asyncio.create_task(batcher.submit([0, 1, 2, 3, 4, 5]))
    await settle()
    model.open()
    with pytest.raises(RuntimeError, match="first part fails"):
        await big
    assert model.calls == [[0, 1]]
    assert batcher.stats.queue_depth == 0
    assert (await batcher.submit([7])).results == [7]
    await batcher.close()


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda items: items[:-1], "returned 1 results for a batch of 2 items"),
        (lambda items: items + items, "returned 4 results for a batch of 2 items"),
        (lambda items: None, "returned NoneType, expected a sequence of 2 results"),
        (lambda items: {"a": 1, "b": 2}, "returned dict"),
    ],
)
async def test_wrong_result_count_fails_that_batch_and_the_loop_continues(
    returned: Callable[[list[int]], object], message: str
) -> None:
    calls = 0

    async def model(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        return returned(items) if calls == 1 else [x * 2 for x in items]  # type: ignore[return-value]

    batcher = Batcher(model, BatchingConfig(max_batch_size=2))
    first = await asyncio.gather(batcher.submit([1]), batcher.submit([2]), return_exceptions=True)
    assert all(isinstance(error, BatchResultMismatch) for error in first)
    assert message in str(first[0])
    assert (await batcher.submit([3])).results == [6]
    await batcher.close()


async def test_bad_arguments_are_typed_errors() -> None:
    with pytest.raises(TypeError, match="batch_fn must be callable"):
        Batcher(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be a BatchingConfig"):
        Batcher(CostModel(), {"max_batch_size": 2})  # type: ignore[arg-type]
    batcher = Batcher(CostModel(a=0.0, b=0.0))
    with pytest.raises(ValueError, match="at least one item"):
        await batcher.submit([])
    with pytest.raises(TypeError, match="items must be a sequence"):
        await batcher.submit(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deadline must be a finite clock time"):
        await batcher.submit([1], deadline=float("nan"))
    assert batcher.stats.requests_total == 0
    await batcher.close()


def test_a_batcher_belongs_to_one_event_loop() -> None:
    batcher = Batcher(CostModel(a=0.0, b=0.0))

    async def use() -> list[int]:
        return (await batcher.submit([1])).results

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(use()) == [2]
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(use())
        loop.run_until_complete(batcher.close())
    finally:
        loop.close()
