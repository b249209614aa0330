"""How batches form: under load, when idle, with a delay, with preferred sizes, when split, per slot."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools

from batchserve.batching import Batcher, BatchingConfig, BatchOutcome, BatchRecord
from tests.batching.batcher_fakes import CostModel, GatedModel, SyncCostModel, settle


async def test_64_concurrent_submitters_share_batches_and_get_their_own_answers() -> None:
    model = CostModel(a=0.003, b=0.0001)
    batcher = Batcher(model, BatchingConfig(max_batch_size=32, max_inflight_batches=1))

    async def client(k: int) -> list[list[int]]:
        answers = []
        for round_ in range(4):
            value = k * 1000 + round_
            outcome = await batcher.submit([value, -value])
            answers.append(outcome.results)
        return answers

    everyone = await asyncio.gather(*(client(k) for k in range(64)))
    await batcher.close()

    for k, answers in enumerate(everyone):
        assert answers == [[2 * (k * 1000 + r), -2 * (k * 1000 + r)] for r in range(4)]
    histogram = batcher.stats.batch_size_histogram
    assert max(histogram) > 2, histogram  # batches carried several requests
    assert max(histogram) <= 32
    assert sum(size * count for size, count in histogram.items()) == 64 * 4 * 2
    assert batcher.stats.mean_batch_size > 2
    assert sum(model.sizes) == 64 * 4 * 2


async def test_requests_pile_up_while_the_slot_is_busy_and_form_the_next_batch() -> None:
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=16, max_inflight_batches=1))
    first = asyncio.create_task(batcher.submit([1]))
    await settle()
    assert model.calls == [[1]]  # dispatched alone: nothing else was waiting
    later = [asyncio.create_task(batcher.submit([k])) for k in range(2, 7)]
    await settle()
    assert len(model.calls) == 1  # the only slot is busy: they wait
    assert batcher.stats.queue_depth == 5
    model.open()
    results = [outcome.results for outcome in await asyncio.gather(first, *later)]
    assert results == [[2], [4], [6], [8], [10], [12]]
    assert model.calls == [[1], [2, 3, 4, 5, 6]]
    await batcher.close()


async def test_lone_request_on_idle_model_is_dispatched_without_a_timer() -> None:
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=32, max_queue_delay_ms=0))
    task = asyncio.create_task(batcher.submit([21]))
    # A handful of loop turns, no wall-clock time: the batch is already running.
    await settle(5)
    assert model.calls == [[21]]
    model.open()
    outcome = await task
    assert outcome.results == [42]
    assert outcome.batch_size == 1 and outcome.batches == 1
    await batcher.close()


async def test_with_a_delay_a_second_request_joins_the_open_batch() -> None:
    model = GatedModel()
    model.open()
    # The delay is far longer than the test: only the second arrival can complete the batch.
    batcher = Batcher(model, BatchingConfig(max_batch_size=2, max_queue_delay_ms=600_000))
    first = asyncio.create_task(batcher.submit(["a"]))
    await settle()
    assert model.calls == []  # held open, waiting for company
    assert batcher.stats.queued_requests == 1
    second = asyncio.create_task(batcher.submit(["b"]))
    assert (await first).results == ["aa"]
    assert (await second).results == ["bb"]
    assert model.calls == [["a", "b"]]
    await batcher.close()


async def test_without_a_delay_the_same_arrivals_go_separately() -> None:
    model = GatedModel()
    model.open()
    batcher = Batcher(model, BatchingConfig(max_batch_size=2, max_queue_delay_ms=0))
    first = asyncio.create_task(batcher.submit(["a"]))
    await settle()
    second = asyncio.create_task(batcher.submit(["b"]))
    await asyncio.gather(first, second)
    assert model.calls == [["a"], ["b"]]
    await batcher.close()


async def test_expired_delay_sends_a_partial_batch() -> None:
    model = CostModel(a=0.0, b=0.0)
    batcher = Batcher(model, BatchingConfig(max_batch_size=8, max_queue_delay_ms=5))
    outcome = await asyncio.wait_for(batcher.submit([3]), timeout=30)
    assert outcome.results == [6] and outcome.batch_size == 1
    await batcher.close()


async def test_preferred_size_reached_is_dispatched_before_the_delay_runs_out() -> None:
    model = GatedModel()
    model.open()
    config = BatchingConfig(max_batch_size=8, max_queue_delay_ms=600_000, preferred_batch_sizes=(2, 3))
    batcher = Batcher(model, config)
    tasks = [asyncio.create_task(batcher.submit([k])) for k in range(2)]
    await settle()
    assert model.calls == []  # 2 is preferred but 3 is still reachable within the delay
    tasks.append(asyncio.create_task(batcher.submit([2])))
    await asyncio.gather(*tasks)
    assert model.calls == [[0, 1, 2]]
    await batcher.close()


async def test_preferred_sizes_cut_the_queue_into_preferred_batches() -> None:
    model = GatedModel()
    config = BatchingConfig(max_batch_size=16, preferred_batch_sizes=(4, 8), max_inflight_batches=1)
    batcher = Batcher(model, config)
    blocker = asyncio.create_task(batcher.submit([100]))
    await settle()
    rest = [asyncio.create_task(batcher.submit([k])) for k in range(11)]
    await settle()
    model.open()
    await asyncio.gather(blocker, *rest)
    # 11 queued: 8 (largest preferred), then 3 (no preferred size fits, no delay: send them).
    assert [len(call) for call in model.calls] == [1, 8, 3]
    await batcher.close()


async def test_request_larger_than_a_batch_is_split_and_rejoined_in_order() -> None:
    model = CostModel(a=0.0005, b=0.0)
    batcher = Batcher(model, BatchingConfig(max_batch_size=4, max_inflight_batches=2))
    outcome = await batcher.submit(list(range(10)))
    assert outcome.results == [2 * x for x in range(10)]
    assert outcome.batches == 3
    assert outcome.batch_size == 4
    assert model.sizes == [4, 4, 2]
    await batcher.close()


async def test_split_request_shares_batches_with_its_neighbours() -> None:
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=4, max_inflight_batches=1))
    blocker = asyncio.create_task(batcher.submit([0]))
    await settle()
    small = asyncio.create_task(batcher.submit([1, 2]))
    big = asyncio.create_task(batcher.submit([10, 11, 12, 13, 14]))
    tail = asyncio.create_task(batcher.submit([20]))
    await settle()
    model.open()
    await blocker
    assert (await small).results == [2, 4]
    big_outcome = await big
    assert big_outcome.results == [20, 22, 24, 26, 28]
    assert big_outcome.batches == 2
    assert (await tail).results == [40]
    # FIFO: the big request's head rides with `small`, its rest with `tail`.
    assert model.calls == [[0], [1, 2, 10, 11], [12, 13, 14, 20]]
    await batcher.close()


async def test_two_slots_overlap_two_batches_and_never_more() -> None:
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=1, max_inflight_batches=2))
    tasks = [asyncio.create_task(batcher.submit([k])) for k in range(5)]
    await settle()
    assert model.running == 2  # overlapping
    assert batcher.stats.inflight_batches == 2
    assert batcher.stats.queue_depth == 3
    model.open()
    assert [t.results for t in await asyncio.gather(*tasks)] == [[0], [2], [4], [6], [8]]
    assert model.max_running == 2
    await batcher.close()


async def test_cost_model_concurrency_never_exceeds_the_slots() -> None:
    model = CostModel(a=0.001, b=0.0001)
    batcher = Batcher(model, BatchingConfig(max_batch_size=4, max_inflight_batches=3))
    await asyncio.gather(*(batcher.submit([k, k]) for k in range(60)))
    assert model.max_running == 3
    await batcher.close()


async def test_sync_batch_function_runs_in_the_given_executor() -> None:
    model = SyncCostModel(a=0.001, b=0.0001)
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="fake-runtime") as pool:
        batcher = Batcher(model, BatchingConfig(max_batch_size=8), executor=pool)
        outcomes = await asyncio.gather(*(batcher.submit([k, k + 1]) for k in range(40)))
        await batcher.close()
    assert [o.results for o in outcomes] == [[2 * k, 2 * k + 2] for k in range(40)]
    assert model.threads and all(name.startswith("fake-runtime") for name in model.threads)
    assert max(len(call) for call in model.calls) > 2


async def test_partial_and_async_callable_objects_are_awaited_not_threaded() -> None:
    async def scaled(factor: int, items: list[int]) -> list[int]:
        return [x * factor for x in items]

    batcher = Batcher(functools.partial(scaled, 3))
    assert (await batcher.submit([1, 2])).results == [3, 6]
    await batcher.close()
    model = GatedModel()  # an object with `async def __call__`
    model.open()
    batcher = Batcher(model)
    assert (await batcher.submit([5])).results == [10]
    await batcher.close()


async def test_non_list_sequences_of_results_are_accepted() -> None:
    batcher = Batcher(lambda items: tuple(x + 1 for x in items))
    outcome = await batcher.submit([1, 2, 3])
    assert outcome.results == [2, 3, 4] and isinstance(outcome.results, list)
    await batcher.close()


async def test_outcome_timings_stats_and_observer_records() -> None:
    records: list[BatchRecord] = []
    model = CostModel(a=0.001, b=0.0)
    batcher = Batcher(model, BatchingConfig(max_batch_size=4, max_inflight_batches=1), on_batch=records.append)
    outcomes: list[BatchOutcome[int]] = await asyncio.gather(*(batcher.submit([k]) for k in range(6)))
    await batcher.close()
    assert all(o.queue_s >= 0 and o.compute_s > 0 for o in outcomes)
    assert [r.size for r in records] == [4, 2]
    assert [r.requests for r in records] == [4, 2]
    assert all(r.ok and r.compute_s > 0 and r.queue_s_max >= 0 for r in records)
    stats = batcher.stats
    assert stats.batches_total == 2 and stats.samples_total == 6 and stats.requests_total == 6
    assert stats.batch_size_histogram == {2: 1, 4: 1}
    assert stats.mean_batch_size == 3
    assert stats.queue_wait.count == 6 and stats.compute.count == 2
    assert stats.compute.p50_s > 0 and stats.compute.p99_s >= stats.compute.p50_s
    assert stats.queue_depth == 0 and stats.inflight_batches == 0


async def test_a_failing_observer_does_not_stall_the_batcher() -> None:
    def observer(record: BatchRecord) -> None:
        raise RuntimeError("observer bug")

    batcher = Batcher(CostModel(a=0.0, b=0.0), on_batch=observer)
    assert (await batcher.submit([1])).results == [2]
    assert (await batcher.submit([2])).results == [4]
    await batcher.close()


async def test_a_freed_slot_starts_the_next_batch_before_its_callers_resume() -> None:
    # Under load the device must not idle while the finished batch's callers run their own code.
    model = GatedModel()
    batcher = Batcher(model, BatchingConfig(max_batch_size=2, max_inflight_batches=1))
    calls_seen_on_resume: list[int] = []

    async def caller(value: int) -> None:
        await batcher.submit([value])
        calls_seen_on_resume.append(len(model.calls))

    first = [asyncio.create_task(caller(k)) for k in (1, 2)]
    await settle()
    waiting = [asyncio.create_task(caller(k)) for k in (3, 4)]
    await settle()
    assert len(model.calls) == 1
    model.open()
    await asyncio.gather(*first, *waiting)
    assert calls_seen_on_resume[:2] == [2, 2]
    await batcher.close()
