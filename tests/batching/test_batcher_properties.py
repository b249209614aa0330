"""Property tests: random arrivals, sizes, cancellations, failing batches and configs.

Whatever the interleaving: no batch exceeds max_batch_size, no item is computed twice, items reach the model
in submission order (FIFO), every request that was neither cancelled nor refused gets exactly its own answers,
and a request fails exactly when one of its items rode a failing batch. Timing comes from loop turns
(asyncio.sleep(0)) and sub-millisecond delays; hypothesis runs without a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from batchserve.batching import Batcher, BatchingConfig, BatchOutcome, QueueFull

Item = tuple[int, int, bool]  # (request id, index in request, poisoned)


class Poisoned(Exception):
    pass


@dataclass(frozen=True)
class Arrival:
    size: int
    wait_turns: int
    cancel_after: int | None
    poisoned: bool


@dataclass(frozen=True)
class Scenario:
    config: BatchingConfig
    arrivals: list[Arrival]
    model_turns: list[int]
    sync_model: bool


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    max_batch = draw(st.integers(1, 8))
    config = BatchingConfig(
        max_batch_size=max_batch,
        max_inflight_batches=draw(st.integers(1, 3)),
        preferred_batch_sizes=tuple(draw(st.lists(st.integers(1, max_batch), unique=True, max_size=3))),
        max_queue_delay_ms=draw(st.sampled_from([0.0, 0.0, 0.2, 1.0])),
        max_queue_size=draw(st.integers(1, 60)),
    )
    arrivals = draw(
        st.lists(
            st.builds(
                Arrival,
                size=st.integers(1, 12),
                wait_turns=st.integers(0, 4),
                cancel_after=st.none() | st.integers(0, 8),
                poisoned=st.integers(0, 4).map(lambda k: k == 0),
            ),
            min_size=1,
            max_size=24,
        )
    )
    return Scenario(
        config=config,
        arrivals=arrivals,
        model_turns=draw(st.lists(st.integers(0, 3), min_size=1, max_size=6)),
        sync_model=draw(st.integers(0, 4)) == 0,
    )


async def play(scenario: Scenario) -> tuple[list[list[Item]], list[int], list[object], Batcher[Item, object]]:
    batches: list[list[Item]] = []

    def compute(items: list[Item]) -> list[object]:
        if any(poisoned for _, _, poisoned in items):
            raise Poisoned(str(items))
        return [("done", rid, index) for rid, index, _ in items]

    async def async_model(items: list[Item]) -> list[object]:
        batches.append(list(items))
        for _ in range(scenario.model_turns[len(batches) % len(scenario.model_turns)]):
            await asyncio.sleep(0)
        return compute(items)

    def sync_model(items: list[Item]) -> list[object]:
        batches.append(list(items))  # list.append is atomic; dispatch order is call order on the loop
        return compute(items)

    # One worker thread: with more, calls could start out of dispatch order and blur the FIFO check.
    executor = concurrent.futures.ThreadPoolExecutor(1) if scenario.sync_model else None
    model = sync_model if scenario.sync_model else async_model
    batcher: Batcher[Item, object] = Batcher(model, scenario.config, executor=executor)
    order: list[int] = []

    async def client(rid: int, arrival: Arrival) -> BatchOutcome[object]:
        for _ in range(arrival.wait_turns):
            await asyncio.sleep(0)
        items = [(rid, index, arrival.poisoned) for index in range(arrival.size)]
        # submit() enqueues before its first await, so this order is the queue's order.
        order.append(rid)
        return await batcher.submit(items)

    async def cancel_later(task: asyncio.Task[BatchOutcome[object]], turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()

    tasks = [asyncio.create_task(client(rid, a)) for rid, a in enumerate(scenario.arrivals)]
    cancellers = [
        asyncio.create_task(cancel_later(task, a.cancel_after))
        for task, a in zip(tasks, scenario.arrivals, strict=True)
        if a.cancel_after is not None
    ]
    await asyncio.gather(*cancellers)
    outcomes: list[object] = []
    for task in tasks:
        try:
            outcomes.append(await task)
        except asyncio.CancelledError:
            outcomes.append(asyncio.CancelledError())
        except (QueueFull, Poisoned) as error:
            outcomes.append(error)
    await batcher.close()
    if executor is not None:
        executor.shutdown()
    # Sync batches are appended from worker threads, but every one has finished once close() returned.
    return batches, order, outcomes, batcher


def check(
    scenario: Scenario,
    batches: list[list[Item]],
    order: list[int],
    outcomes: list[object],
    batcher: Batcher[Item, object],
) -> None:
    config = scenario.config
    assert all(1 <= len(batch) <= config.max_batch_size for batch in batches)

    flat = [(rid, index) for batch in batches for rid, index, _ in batch]
    assert len(flat) == len(set(flat)), "an item was computed twice"

    # FIFO: each request's computed items are a contiguous prefix of it, requests in queue order.
    position = 0
    dispatched: dict[int, int] = {}
    for rid in order:
        count = sum(1 for r, _ in flat if r == rid)
        assert flat[position : position + count] == [(rid, index) for index in range(count)]
        dispatched[rid] = count
        position += count
    assert position == len(flat)

    poisoned_batch_of: dict[tuple[int, int], bool] = {}
    batch_sizes: dict[tuple[int, int], int] = {}
    for batch in batches:
        bad = any(poisoned for _, _, poisoned in batch)
        for rid, index, _ in batch:
            poisoned_batch_of[(rid, index)] = bad
            batch_sizes[(rid, index)] = len(batch)

    for rid, (arrival, outcome) in enumerate(zip(scenario.arrivals, outcomes, strict=True)):
        rode_bad = any(poisoned_batch_of.get((rid, index), False) for index in range(arrival.size))
        event(f"outcome: {type(outcome).__name__}")
        if 0 < dispatched.get(rid, 0) < arrival.size:
            event("a request was cut short (cancelled or failed midway)")
        if isinstance(outcome, asyncio.CancelledError):
            continue
        if isinstance(outcome, QueueFull):
            assert dispatched.get(rid, 0) == 0
            assert outcome.retry_after_s >= 1
            continue
        if isinstance(outcome, Poisoned):
            assert rode_bad
            continue
        assert isinstance(outcome, BatchOutcome)
        assert not rode_bad and not arrival.poisoned
        assert outcome.results == [("done", rid, index) for index in range(arrival.size)]
        assert dispatched[rid] == arrival.size
        assert outcome.batch_size == max(batch_sizes[(rid, index)] for index in range(arrival.size))
        assert outcome.batches >= -(-arrival.size // config.max_batch_size)

    event(f"largest batch: {max(map(len, batches), default=0)} of {config.max_batch_size}")
    stats = batcher.stats
    assert stats.queue_depth == 0 and stats.queued_requests == 0 and stats.inflight_batches == 0
    assert stats.samples_total == len(flat) and stats.batches_total == len(batches)
    assert stats.requests_total + stats.rejected_total == len(order)


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_arrivals_keep_every_promise(scenario: Scenario) -> None:
    batches, order, outcomes, batcher = asyncio.run(play(scenario))
    check(scenario, batches, order, outcomes, batcher)
