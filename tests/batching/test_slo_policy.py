"""The latency-target policy: the online fit of a + b·n, the hold it allows, and the batcher using it.

Batchers here run on a VirtualClock with a device the test finishes by hand, so every duration the fit sees
is exact and nothing waits on the wall clock. Holds that the tests leave open are seconds long, so no real
timer fires while a test runs.
"""

from __future__ import annotations

import asyncio
import random
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

import pytest

from batchserve.batching import Batcher, BatchingConfig
from batchserve.batching.fit import MIN_BATCHES, SKIPPED_FIRST, WINDOW, CostEstimate, CostFit, fit
from batchserve.batching.policy import Decision, decide
from batchserve.batching.slo import (
    HANDOVER_LEAD_S,
    LATE_PER_BATCH,
    MARGIN_FRACTION,
    MAX_MARGIN_FRACTION,
    MAX_OVERSHOOT_FRACTION,
    MIN_HOLD_S,
    SloOutlook,
    SloTracker,
)
from tests.batching.batcher_fakes import VirtualClock, settle

# ------------------------------------------------------------------------------------------------ helpers


class ManualDevice:
    """A batch function whose batches end when the test says, after moving the clock by their cost."""

    def __init__(self, clock: VirtualClock, fixed_s: float, per_sample_s: float) -> None:
        self.clock = clock
        self.fixed_s = fixed_s
        self.per_sample_s = per_sample_s
        self.sizes: list[int] = []
        self._waiting: list[asyncio.Future[None]] = []

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.sizes.append(len(items))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(done)
        await done
        return list(items)

    @property
    def running(self) -> int:
        return len(self._waiting)

    def cost(self, size: int) -> float:
        return self.fixed_s + self.per_sample_s * size

    async def finish_one(self) -> None:
        """The oldest running batch ends, its cost a + b·n after the clock's current time."""
        done = self._waiting.pop(0)
        self.clock.advance(self.cost(self.sizes[-1 - len(self._waiting)]))
        done.set_result(None)
        await settle()


async def run_batches(batcher: Batcher[int, int], device: ManualDevice, sizes: list[int]) -> None:
    """One batch per size: that many single-item requests in one loop turn, then the batch ends.

    Each request's deadline leaves no room to hold it (its answer is due one batch cost from now), so these
    batches go at once whether or not a target would otherwise hold them."""
    for size in sizes:
        deadline = device.clock.now + device.cost(size)
        calls = [asyncio.ensure_future(batcher.submit([i], deadline=deadline)) for i in range(size)]
        await settle()
        assert device.running == 1, "each scripted batch runs alone"
        await device.finish_one()
        await asyncio.gather(*calls)


def training_sizes(count: int = 24) -> list[int]:
    return [1 + (i * 5) % 8 for i in range(count)]  # 1..8, repeating: enough spread to tell a from b


def outlook(
    *,
    fixed_s: float = 0.020,
    per_sample_s: float = 0.001,
    budget_s: float = 0.140,
    busy_s: float = 0.0,
    deadline_in_s: float | None = None,
    pays: bool = True,
) -> SloOutlook:
    return SloOutlook(
        budget_s=budget_s,
        cost=CostEstimate(fixed_s, per_sample_s, 0.0, 64),
        device_busy_s=busy_s,
        deadline_in_s=deadline_in_s,
        pays=pays,
    )


# ---------------------------------------------------------------------------------------------------- fit


def test_fit_converges_on_a_noisy_device_line() -> None:
    rng = random.Random(7)
    cost = CostFit()
    for _ in range(200):
        size = rng.randint(1, 32)
        cost.add(size, 0.020 + 0.001 * size + rng.gauss(0.0, 0.0005))
    estimate = cost.estimate
    assert estimate is not None
    assert estimate.fixed_ms == pytest.approx(20.0, abs=0.5)
    assert estimate.per_sample_ms == pytest.approx(1.0, abs=0.03)
    assert 0.0003 < estimate.residual_s < 0.0008


def test_fit_waits_for_enough_batches_of_varied_sizes() -> None:
    cost = CostFit(skip_first=0)
    for _ in range(MIN_BATCHES * 2):
        cost.add(4, 0.024)
    assert cost.estimate is None, "one size cannot tell a from b"
    for size in (1, 8) * (MIN_BATCHES // 2):
        cost.add(size, 0.020 + 0.001 * size)
    assert cost.estimate is not None


def test_a_window_of_one_size_keeps_the_last_estimate() -> None:
    cost = CostFit(window=16, skip_first=0)
    for size in (1, 8) * 8:
        cost.add(size, 0.020 + 0.001 * size)
    first = cost.estimate
    assert first is not None and first.fixed_ms == pytest.approx(20.0)
    for _ in range(16):
        cost.add(32, 0.052)  # steady full batches: the window alone says nothing of a versus b
    assert cost.estimate == first


def test_an_odd_batch_among_full_ones_does_not_decide_the_split() -> None:
    cost = CostFit(skip_first=0)
    for size in training_sizes(32):
        cost.add(size, 0.020 + 0.001 * size)
    learned = cost.estimate
    assert learned is not None
    rng = random.Random(5)
    for _ in range(WINDOW):  # the training batches leave the window
        cost.add(32, 0.052 + rng.uniform(-0.002, 0.002))
    cost.add(18, 0.045)  # 7 ms off the line: alone, it would say a = 36 ms
    for _ in range(20):
        cost.add(32, 0.052 + rng.uniform(-0.002, 0.002))
    assert cost.estimate == learned
    for size in (8, 12, 16, 24) * 2:  # a few more sizes (off the line by their noise only) do tell
        cost.add(size, 0.020 + 0.001 * size + rng.uniform(-0.002, 0.002))
    refreshed = cost.estimate
    assert refreshed is not learned and refreshed is not None
    assert refreshed.fixed_ms == pytest.approx(20.0, abs=2.5)


def test_a_stalled_batch_is_left_out_of_the_fit() -> None:
    observations = [(size, 0.020 + 0.001 * size) for size in training_sizes(40)]
    observations[17] = (observations[17][0], 0.300)  # the process paused while it ran
    estimate = fit(observations)
    assert estimate is not None
    assert estimate.fixed_ms == pytest.approx(20.0) and estimate.per_sample_ms == pytest.approx(1.0)


def test_fit_skips_the_first_batches() -> None:
    cost = CostFit(skip_first=SKIPPED_FIRST)
    for _ in range(SKIPPED_FIRST):
        cost.add(1, 5.0)  # a runtime's first call: slow for reasons unrelated to batching
    for size in training_sizes():
        cost.add(size, 0.020 + 0.001 * size)
    estimate = cost.estimate
    assert estimate is not None
    assert estimate.fixed_ms == pytest.approx(20.0) and estimate.per_sample_ms == pytest.approx(1.0)


def test_fit_clamps_negative_terms() -> None:
    per_sample_only = fit([(n, 0.010 * n - 0.001) for n in range(1, 17)])  # least squares would give a < 0
    assert per_sample_only is not None
    assert per_sample_only.fixed_s == 0.0 and per_sample_only.per_sample_s == pytest.approx(0.010, rel=0.02)
    shrinking = fit([(n, 0.030 - 0.0001 * n) for n in range(1, 17)])  # b < 0: all fixed
    assert shrinking is not None
    assert shrinking.per_sample_s == 0.0 and shrinking.fixed_s == pytest.approx(0.02915, rel=0.01)


# --------------------------------------------------------------------------------------------------- hold


@pytest.mark.parametrize("available", [1, 5, 12, 20])
@pytest.mark.parametrize("waited_s", [0.0, 0.010, 0.050, 0.100, 0.200])
@pytest.mark.parametrize("busy_s", [0.0, 0.015, 0.060])
def test_the_hold_keeps_the_oldest_requests_predicted_completion_within_the_budget(
    available: int, waited_s: float, busy_s: float
) -> None:
    view = outlook(busy_s=busy_s)
    hold = view.hold_s(available, waited_s)
    assert hold >= 0.0
    now = view.completion_s(available, waited_s)
    if now <= view.budget_s:
        # It can be on time: held as long as it stays so, and not a moment longer.
        assert view.completion_s(available, waited_s, hold) <= view.budget_s + 1e-12
        if hold > 0:
            assert view.completion_s(available, waited_s, hold + 1e-6) > view.budget_s
        else:
            assert view.budget_s - now < MIN_HOLD_S  # too little left to be worth a timer
    else:
        # Late whatever happens: held only while the device is busy anyway, which costs it nothing.
        assert hold == pytest.approx(max(busy_s - HANDOVER_LEAD_S, 0.0))
        assert view.completion_s(available, waited_s, hold) == pytest.approx(view.completion_s(available, waited_s))


def test_more_waiting_or_more_samples_shorten_the_hold() -> None:
    view = outlook()
    assert view.hold_s(1, 0.0) == pytest.approx(0.140 - 0.021)
    assert view.hold_s(1, 0.030) == pytest.approx(0.140 - 0.030 - 0.021)
    assert view.hold_s(11, 0.030) == pytest.approx(0.140 - 0.030 - 0.031)


def test_no_hold_past_a_queued_requests_deadline() -> None:
    view = outlook(deadline_in_s=0.050)
    # Its answer must come before the deadline: dispatch by deadline - cost.
    assert view.hold_s(4, 0.0) == pytest.approx(0.050 - 0.024)
    assert outlook(deadline_in_s=0.010).hold_s(4, 0.0) == 0.0  # too close: dispatch now
    assert decide(BatchingConfig(max_batch_size=32), 4, 0.0, slo=outlook(deadline_in_s=0.010)) == Decision(4)


def test_holding_that_does_not_pay_dispatches_at_once() -> None:
    config = BatchingConfig(max_batch_size=32, max_queue_delay_ms=50)
    assert decide(config, 3, 0.0, slo=outlook(pays=False)) == Decision(3)


def test_policy_keeps_full_batches_and_preferred_sizes_under_a_target() -> None:
    config = BatchingConfig(max_batch_size=16, preferred_batch_sizes=(4, 8))
    view = outlook()
    assert decide(config, 16, 0.0, slo=view) == Decision(16)
    assert decide(config, 9, 0.0, slo=view) == Decision(8)  # largest preferred reached: go
    held = decide(config, 5, 0.0, slo=view)
    assert held.size == 0 and held.wait_s == pytest.approx(view.hold_s(5, 0.0))
    assert decide(config, 5, 0.200, slo=view) == Decision(4)  # budget spent: largest preferred that fits


def test_tracker_reads_service_times_off_a_serial_device() -> None:
    tracker = SloTracker(BatchingConfig(latency_slo_ms=100), CostFit(skip_first=0))
    tracker.observe(4, started_at=0.0, finished_at=0.024, ok=True)
    # Started while the first ran: it began on the device when that one ended.
    tracker.observe(8, started_at=0.010, finished_at=0.052, ok=True)
    tracker.observe(2, started_at=0.100, finished_at=0.100, ok=False)  # failed at once: not a cost
    assert list(tracker.fit._window) == [(4, pytest.approx(0.024)), (8, pytest.approx(0.028))]


def test_tracker_predicts_how_long_the_device_stays_busy() -> None:
    config = BatchingConfig(max_batch_size=32, latency_slo_ms=150)
    tracker = SloTracker(config, CostFit(skip_first=0))
    for size in training_sizes():
        tracker.observe(size, started_at=0.0, finished_at=0.0, ok=False)  # nothing learned from failures
    assert tracker.outlook(1.0, [], None) is None
    last = 0.0
    for size in training_sizes():
        tracker.observe(size, started_at=last, finished_at=last + 0.020 + 0.001 * size, ok=True)
        last += 0.020 + 0.001 * size
    now = last + 1.0
    idle = tracker.outlook(now, [], None)
    assert idle is not None and idle.device_busy_s == 0.0 and idle.pays
    # One batch of 10 running for 5 ms, another of 4 queued behind it: 25 ms + 24 ms left.
    busy = tracker.outlook(now, [(now - 0.005, 10), (now - 0.001, 4)], now + 0.5)
    assert busy is not None
    assert busy.device_busy_s == pytest.approx(0.025 + 0.024)
    assert busy.deadline_in_s == pytest.approx(0.5)
    assert busy.budget_s == pytest.approx(0.150 * (1 - MARGIN_FRACTION))  # an exact fit: no scatter to add


def test_late_answers_widen_the_margin_and_on_time_ones_narrow_it() -> None:
    tracker = SloTracker(BatchingConfig(latency_slo_ms=100))
    tracker.answered(1.0, [0.5, 0.6, 0.95])  # two of three past 100 ms
    widened = tracker.learned_margin_s
    assert widened > 0
    for _ in range(100):
        tracker.answered(2.0, [1.99] * 10)
    assert tracker.learned_margin_s < widened
    for _ in range(10_000):
        tracker.answered(3.0, [1.0] * 10)  # every one late: widened up to the cap
    assert tracker.learned_margin_s == pytest.approx(MAX_MARGIN_FRACTION * 0.100)
    for _ in range(100_000):
        tracker.answered(4.0, [3.99] * 10)  # none late for long: it may hold a little past the target
    assert tracker.learned_margin_s == pytest.approx(-MAX_OVERSHOOT_FRACTION * 0.100)


def test_one_batch_of_late_answers_widens_the_margin_a_bounded_step() -> None:
    paused = SloTracker(BatchingConfig(latency_slo_ms=100))
    paused.answered(1.0, [0.0] * 32)  # a pause of the process made a whole batch late
    some = SloTracker(BatchingConfig(latency_slo_ms=100))
    some.answered(1.0, [0.0] * LATE_PER_BATCH + [0.99] * (32 - LATE_PER_BATCH))
    assert paused.learned_margin_s > 0
    assert paused.learned_margin_s == pytest.approx(some.learned_margin_s)


def test_an_answer_just_inside_the_target_counts_as_late() -> None:
    tracker = SloTracker(BatchingConfig(latency_slo_ms=100))
    tracker.answered(1.0, [1.0 - 0.0995])  # 99.5 ms: within the guard kept for what the batcher cannot see
    assert tracker.learned_margin_s > 0


# ------------------------------------------------------------------------------------- through the batcher


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    yield VirtualClock()


async def test_the_batcher_learns_its_devices_cost(clock: VirtualClock) -> None:
    device = ManualDevice(clock, 0.020, 0.001)
    batcher: Batcher[int, int] = Batcher(device, BatchingConfig(max_batch_size=8), clock=clock)
    assert batcher.cost_estimate is None and batcher.stats.cost_fixed_ms is None
    await run_batches(batcher, device, training_sizes())
    estimate = batcher.cost_estimate
    assert estimate is not None
    assert estimate.fixed_ms == pytest.approx(20.0) and estimate.per_sample_ms == pytest.approx(1.0)
    stats = batcher.stats
    assert stats.cost_fixed_ms == pytest.approx(20.0) and stats.cost_per_sample_ms == pytest.approx(1.0)
    await batcher.close()


async def test_a_cpu_like_cost_never_holds(clock: VirtualClock) -> None:
    device = ManualDevice(clock, 0.0, 0.010)  # b·n is the whole cost: a larger batch saves nothing
    config = BatchingConfig(max_batch_size=8, latency_slo_ms=60_000)
    batcher: Batcher[int, int] = Batcher(device, config, clock=clock)
    await run_batches(batcher, device, training_sizes())
    estimate = batcher.cost_estimate
    assert estimate is not None and estimate.fixed_s == pytest.approx(0.0, abs=1e-9)
    for _ in range(3):
        call = asyncio.ensure_future(batcher.submit([1]))
        await settle()
        assert device.running == 1, "a lone request goes at once, however far the target"
        await device.finish_one()
        await call
    assert device.sizes[-3:] == [1, 1, 1]
    await batcher.close()


async def test_a_large_fixed_cost_holds_and_batches_grow(clock: VirtualClock) -> None:
    device = ManualDevice(clock, 2.0, 0.1)  # seconds: a held batch's timer never fires during the test
    config = BatchingConfig(max_batch_size=8, latency_slo_ms=60_000)
    batcher: Batcher[int, int] = Batcher(device, config, clock=clock)
    await run_batches(batcher, device, training_sizes())
    trained = len(device.sizes)
    calls = []
    for i in range(8):
        calls.append(asyncio.ensure_future(batcher.submit([i])))
        await settle()
        clock.advance(0.5)
        if i < 7:
            assert device.running == 0, f"held open with {i + 1} queued"
    assert device.sizes[trained:] == [8]
    await device.finish_one()
    assert [call.result().batch_size for call in calls] == [8] * 8
    await batcher.close()


async def test_the_oldest_requests_predicted_completion_ends_the_hold(clock: VirtualClock) -> None:
    device = ManualDevice(clock, 2.0, 0.1)
    config = BatchingConfig(max_batch_size=32, latency_slo_ms=10_000)
    batcher: Batcher[int, int] = Batcher(device, config, clock=clock)
    await run_batches(batcher, device, training_sizes())
    budget = 10.0 * (1 - MARGIN_FRACTION)
    first = asyncio.ensure_future(batcher.submit([1]))
    await settle()
    # Two queued after the next arrival: the oldest completes at waited + 2.0 + 0.1·2.
    clock.advance(budget - 2.2 - 0.01)
    second = asyncio.ensure_future(batcher.submit([2]))
    await settle()
    assert device.running == 0, "just inside the budget: still held"
    clock.advance(0.02)
    third = asyncio.ensure_future(batcher.submit([3]))
    await settle()
    assert device.running == 1 and device.sizes[-1] == 3, "past it: dispatched with all queued"
    await device.finish_one()
    await asyncio.gather(first, second, third)
    await batcher.close()


async def test_a_target_waits_for_the_fit_on_the_static_delay(clock: VirtualClock) -> None:
    device = ManualDevice(clock, 2.0, 0.1)
    config = BatchingConfig(max_batch_size=8, latency_slo_ms=60_000)  # max_queue_delay_ms 0: dispatch at once
    batcher: Batcher[int, int] = Batcher(device, config, clock=clock)
    call = asyncio.ensure_future(batcher.submit([1]))
    await settle()
    assert device.running == 1 and batcher.cost_estimate is None
    await device.finish_one()
    await call
    await batcher.close()


# ------------------------------------------------------------------------------------ off: unchanged decisions


def reference_decide(config: BatchingConfig, available: int, oldest_wait_s: float, flush: bool) -> Decision:
    """The policy as it stood before latency targets, verbatim."""
    cap = config.max_batch_size
    if available >= cap:
        return Decision(cap)
    preferred = config.preferred_batch_sizes
    remaining = config.max_queue_delay_s - oldest_wait_s
    if flush or remaining <= 0.0:
        if preferred:
            index = bisect_right(preferred, available)
            if index:
                return Decision(preferred[index - 1])
        return Decision(available)
    if preferred and available >= preferred[-1]:
        return Decision(preferred[-1])
    return Decision(0, remaining)


@pytest.mark.parametrize(
    "config",
    [
        BatchingConfig(),
        BatchingConfig(max_batch_size=8, max_queue_delay_ms=10),
        BatchingConfig(max_batch_size=32, max_queue_delay_ms=5, preferred_batch_sizes=(4, 8, 16)),
        BatchingConfig(max_batch_size=16, preferred_batch_sizes=(2, 16)),
    ],
)
def test_without_a_target_decisions_are_the_old_policys(config: BatchingConfig) -> None:
    rng = random.Random(3)
    for _ in range(2000):
        available = rng.randint(1, 40)
        waited = rng.choice([0.0, 0.001, 0.004999, 0.005, 0.0099, 0.010, rng.uniform(0, 0.02)])
        flush = rng.random() < 0.1
        assert decide(config, available, waited, flush=flush) == reference_decide(config, available, waited, flush)


async def test_without_a_target_a_learned_fit_changes_no_batch(clock: VirtualClock) -> None:
    """The same scripted arrivals through a fresh batcher and one that has learned a cost that would hold:
    with latency_slo_ms unset both cut the same batches."""

    async def script(batcher: Batcher[int, int], device: ManualDevice) -> list[int]:
        start = len(device.sizes)
        for group in (1, 3, 2, 7, 1, 5):
            calls = [asyncio.ensure_future(batcher.submit([i])) for i in range(group)]
            await settle()
            clock.advance(0.001)
            more = asyncio.ensure_future(batcher.submit([99]))  # arrives while a batch runs
            await settle()
            while device.running:
                await device.finish_one()
            await asyncio.gather(*calls, more)
        return device.sizes[start:]

    config = BatchingConfig(max_batch_size=8, max_inflight_batches=1)
    fresh_device = ManualDevice(clock, 2.0, 0.1)
    fresh: Batcher[int, int] = Batcher(fresh_device, config, clock=clock)
    trained_device = ManualDevice(clock, 2.0, 0.1)
    trained: Batcher[int, int] = Batcher(trained_device, config, clock=clock)
    await run_batches(trained, trained_device, training_sizes())
    assert trained.cost_estimate is not None and fresh.cost_estimate is None
    expected = await script(fresh, fresh_device)
    assert expected == [1, 1, 3, 1, 2, 1, 7, 1, 1, 1, 5, 1]
    assert await script(trained, trained_device) == expected
    await fresh.close()
    await trained.close()


# ------------------------------------------------------------------------------------------------- config


def test_latency_slo_ms_is_validated() -> None:
    assert BatchingConfig().latency_slo_ms is None
    assert BatchingConfig(latency_slo_ms=150).latency_slo_ms == 150.0
    assert BatchingConfig(latency_slo_ms=150).latency_slo_s == pytest.approx(0.150)
    assert BatchingConfig(latency_slo_ms=0).latency_slo_ms is None  # 0 turns a config.toml target off
    for bad in (-1, float("nan"), float("inf"), True, "150"):
        with pytest.raises(ValueError, match="latency_slo_ms"):
            BatchingConfig(latency_slo_ms=bad)  # type: ignore[arg-type]
