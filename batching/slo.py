"""Holding a batch open against a latency target: how long the oldest queued request can still wait.

A batch of n costs a + b·n (fitted online, see fit.py). Dispatched after a further hold of h, the oldest
queued request, which has waited w, completes at about

    w + max(h, q) + a + b·n

where q is how long the device stays busy with the batches already running: the execution slots are treated
as feeding one serial device (a GPU stream, or a CPU runtime that uses every core), so a batch handed over
while another runs waits for it. The hold lasts while that stays within the target less a margin, so the
batch gathers whatever arrives meanwhile; the scheduler asks again at every arrival, so n is always the
current count. When the oldest request is late whatever happens (q alone takes it past the target), the
batch still gathers until the device is free: handing it over sooner would not answer anyone sooner.
Holding pays only where a is a real share of a batch's cost: on a CPU, where b·n is nearly all of it, a
larger batch saves nothing per sample and the batch goes at once.

The target is a p99, so the margin kept back from it is learned from the answers: each request answered
past the target widens it, each one on time narrows it a little, so that about MISS_RATE of the answers are
late (a quantile tracked online). It starts from a small static margin (plus the fit's scatter) and covers
what the prediction cannot see: arrivals bunching up behind a full batch, timer lateness, a device slower
than its line. Where almost every batch fills before its budget runs out, the few that do not may hold a
little past the target (at most MAX_OVERSHOOT_FRACTION of it), as long as the answers late for it stay
that rare. The margin never grows past MAX_MARGIN_FRACTION of the target, where holds are short enough that
batches form much as without a target: from the slots being busy.

The service time of each finished batch is read off the same serial model: it began when it was started or
when the batch before it finished, whichever came later. On a device that runs batches side by side that
splits overlapping batches' time between them unevenly, but it conserves their sum, which is what the fit
of the cost per sample rests on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from batchserve.batching.config import BatchingConfig
from batchserve.batching.fit import CostEstimate, CostFit

__all__ = ["SloOutlook", "SloTracker"]

HOLD_PAYS_FIXED_SHARE = 0.05
"""Holding pays when the fixed cost a is at least this share of a full batch's cost a + b·max_batch_size."""
MARGIN_FRACTION = 0.01
"""Share of the target kept back from the start, before any answer was late."""
MARGIN_MIN_S = 0.0005
RESIDUAL_MARGIN = 2.0
"""Root-mean-square errors of the fit added to the margin: a noisy device gets a wider one."""
MISS_RATE = 0.005
"""Share of answers allowed past the target, which the learned margin steers towards (p99 leaves 1 %)."""
LATE_GUARD_FRACTION = 0.02
"""An answer counts as late this share of the target before it (at least LATE_GUARD_MIN_S): the batcher sees
from submit to answer, a caller a little more (getting its request in, picking its answer up)."""
LATE_GUARD_MIN_S = 0.002
MARGIN_STEP_FRACTION = 0.005
"""Share of the target one late answer adds to the learned margin."""
MAX_MARGIN_FRACTION = 0.5
MAX_OVERSHOOT_FRACTION = 0.1
"""The margin goes no lower than minus this share of the target."""
MIN_HOLD_S = 0.0001
"""Shorter holds dispatch at once: nothing arrives in them worth a timer."""
HANDOVER_LEAD_S = 0.002
"""How long before the device is predicted free a batch held only for it is handed over."""
LATE_PER_BATCH = 4
"""Late answers one batch counts at most: a pause of the whole process makes every answer of a batch late at
once, which says nothing of the margin, and would otherwise widen it for a long time."""


@dataclass(frozen=True, slots=True)
class SloOutlook:
    """What the policy needs to decide a hold, at one moment."""

    budget_s: float
    """The target less the margin: the latest predicted completion, counted from the oldest request's submit."""
    cost: CostEstimate
    device_busy_s: float
    """How long the device stays busy with the batches already running (0 when idle)."""
    deadline_in_s: float | None
    """Time left until the earliest deadline among the queued requests; None when none has one."""
    pays: bool
    """Whether a larger batch saves device time per sample here (see HOLD_PAYS_FIXED_SHARE)."""

    def completion_s(self, available: int, oldest_wait_s: float, hold_s: float = 0.0) -> float:
        """Predicted submit-to-answer time of the oldest request when its batch of ``available`` goes after
        a further ``hold_s``."""
        return oldest_wait_s + max(hold_s, self.device_busy_s) + self.cost.seconds(available)

    def hold_s(self, available: int, oldest_wait_s: float) -> float:
        """Seconds the batch of ``available`` may stay open; 0: dispatch it now."""
        if not self.pays:
            return 0.0
        cost = self.cost.seconds(available)
        hold = self.budget_s - oldest_wait_s - cost
        if hold < self.device_busy_s:
            # Late whatever the hold: the device is busy past the budget. Handing the batch over long before
            # the device is free would not answer it sooner, only cut it short and spend another a on the
            # rest, so it gathers until just before then (just before: so that it is queued on the device
            # when the batch ahead ends, rather than handed over once the scheduler hears of that end).
            hold = self.device_busy_s - HANDOVER_LEAD_S
        if self.deadline_in_s is not None:
            # The deadline is the caller's too: the answer, not just the dispatch, must come before it.
            hold = min(hold, self.deadline_in_s - cost)
        return hold if hold >= MIN_HOLD_S else 0.0


class SloTracker:
    """A batcher's side of the SLO policy: fits the cost of its batches and builds an outlook per decision.

    The fit runs whether or not a target is set, so the learned cost can be watched before one is.
    """

    __slots__ = ("fit", "learned_margin_s", "_config", "_last_finish")

    def __init__(self, config: BatchingConfig, fit: CostFit | None = None) -> None:
        self.fit = fit if fit is not None else CostFit()
        self.learned_margin_s = 0.0
        """Added to the static margin, from the answers that came late (see the module docstring)."""
        self._config = config
        self._last_finish = -math.inf

    @property
    def estimate(self) -> CostEstimate | None:
        return self.fit.estimate

    def observe(self, size: int, started_at: float, finished_at: float, *, ok: bool) -> None:
        """One batch finished: its service time on the serial device goes into the fit (failed ones do not:
        a batch that fails at once says nothing of the cost of running one)."""
        began = max(started_at, self._last_finish)
        self._last_finish = max(self._last_finish, finished_at)
        if ok:
            self.fit.add(size, finished_at - began)

    def answered(self, now: float, submitted_at: Iterable[float]) -> None:
        """Requests submitted at ``submitted_at`` were answered at ``now``: the learned margin follows how many
        of them took longer than the target."""
        slo_s = self._config.latency_slo_s
        if slo_s is None:
            return
        late_before = now - slo_s + max(LATE_GUARD_FRACTION * slo_s, LATE_GUARD_MIN_S)
        answers = late = 0
        for submitted in submitted_at:
            answers += 1
            if submitted < late_before:
                late += 1
        step = MARGIN_STEP_FRACTION * slo_s
        margin = self.learned_margin_s + step * (min(late, LATE_PER_BATCH) - MISS_RATE * answers)
        self.learned_margin_s = min(max(margin, -MAX_OVERSHOOT_FRACTION * slo_s), MAX_MARGIN_FRACTION * slo_s)

    def outlook(
        self, now: float, running: Iterable[tuple[float, int]], earliest_deadline: float | None
    ) -> SloOutlook | None:
        """None while there is no target or no estimate yet (the static delay then decides).

        ``running`` holds (started_at, size) of each batch in flight."""
        slo_s = self._config.latency_slo_s
        if slo_s is None:
            return None
        cost = self.fit.estimate
        if cost is None:
            return None
        margin = max(MARGIN_FRACTION * slo_s, MARGIN_MIN_S) + RESIDUAL_MARGIN * cost.residual_s
        margin = min(max(margin + self.learned_margin_s, -MAX_OVERSHOOT_FRACTION * slo_s), MAX_MARGIN_FRACTION * slo_s)
        full = cost.seconds(self._config.max_batch_size)
        return SloOutlook(
            budget_s=slo_s - margin,
            cost=cost,
            device_busy_s=self._device_busy_s(now, running, cost),
            deadline_in_s=None if earliest_deadline is None else earliest_deadline - now,
            pays=full > 0.0 and cost.fixed_s >= HOLD_PAYS_FIXED_SHARE * full,
        )

    def _device_busy_s(self, now: float, running: Iterable[tuple[float, int]], cost: CostEstimate) -> float:
        free_at = self._last_finish
        for started_at, size in sorted(running):
            # A batch still running is not done, whatever the estimate says: it ends now at the earliest.
            free_at = max(max(started_at, free_at) + cost.seconds(size), now)
        return max(0.0, free_at - now)
