"""How fast the server answers its refusals.

A refusal costs little (no body read, nothing decoded), but not nothing: parsing the request,
answering it and the kernel's work on both ends come to a few hundred microseconds of CPU.
Clients that retry the moment they are refused turn that into a busy loop whose rate has no
bound but the CPU itself, and on a machine whose cores also decode and run the model, every
refusal answered takes time from the admitted requests: 800 such connections on two cores left
the model a fifth of its throughput.

So refusals are answered at once up to `ratio` times the rate at which admitted requests
complete (at least `floor_per_s`), with a second's worth of burst; past it each refusal waits
for its turn (at most `max_wait_s`), holding only its connection and a suspended coroutine.
Ordinary overload, a few refusals per answer, is never slowed; a retry storm is held to a share of
the CPU proportional to the useful work, whatever the machine's speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

RATE_WINDOW_S = 1.0  # how often the completion rate is measured
RATE_HALF_LIFE_S = 10.0  # the estimate follows a rising rate at once and a falling one with this half-life
BURST_S = 1.0  # refusals answered at once beyond the pace: this many seconds' worth


class RefusalPacer:
    """A token bucket of refusals, refilled at `ratio` x the completion rate (at least `floor_per_s`).

    The completion rate is the recent peak, decaying slowly, rather than the last second's: right
    after a lull, and while a storm holds the rate down, the model's capacity is what counts."""

    def __init__(self, ratio: float, floor_per_s: float, max_wait_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.floor_per_s = floor_per_s
        self.max_wait_s = max_wait_s
        self._clock = clock
        now = clock()
        self.completed = 0
        self._window_start = now
        self._window_completed = 0
        self.completion_rate = 0.0
        self.rate_per_s = floor_per_s
        self._tokens = floor_per_s * BURST_S
        self._refilled_at = now
        self.delayed_total = 0

    def completed_one(self) -> None:
        """An admitted request finished (whatever its answer)."""
        self.completed += 1
        now = self._clock()
        if now - self._window_start >= RATE_WINDOW_S:
            self._measure(now)

    def would_wait(self) -> bool:
        """Whether a refusal answered now would have to wait (`delay` > 0); nothing is taken."""
        self._catch_up()
        return self._tokens < 1.0

    def delay(self) -> float:
        """Seconds the refusal being answered now should wait first (0 while within the pace)."""
        self._catch_up()
        rate = self.rate_per_s
        tokens = self._tokens - 1.0
        # Floored, so that more waiting refusals than the pace serves in `max_wait_s` cannot push
        # the schedule ever further ahead: past that they are answered after `max_wait_s`.
        self._tokens = max(tokens, -rate * self.max_wait_s)
        if tokens >= 0:
            return 0.0
        self.delayed_total += 1
        return min(-tokens / rate, self.max_wait_s)

    def _catch_up(self) -> None:
        """The rate and the tokens as of now."""
        now = self._clock()
        if now - self._window_start >= RATE_WINDOW_S:
            self._measure(now)
        self._refill(now)

    def _refill(self, now: float) -> None:
        """Tokens earned since the last refill, at the pace then in force."""
        rate = self.rate_per_s
        self._tokens = min(rate * BURST_S, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now

    def _measure(self, now: float) -> None:
        self._refill(now)
        elapsed = now - self._window_start
        measured = (self.completed - self._window_completed) / elapsed
        decayed = self.completion_rate * 0.5 ** (elapsed / RATE_HALF_LIFE_S)
        self.completion_rate = max(measured, decayed)
        self.rate_per_s = max(self.floor_per_s, self.ratio * self.completion_rate)
        self._tokens = max(min(self._tokens, self.rate_per_s * BURST_S), -self.rate_per_s * self.max_wait_s)
        self._window_start, self._window_completed = now, self.completed
