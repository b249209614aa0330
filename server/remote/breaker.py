"""A circuit breaker per upstream: after a run of connection failures, stop sending it requests.

Closed: requests flow; `threshold` connection failures in a row open it. Open: no request is sent
(a dead backend then costs no one a connect attempt) until `open_s` has passed; then half-open:
one request goes as a probe while the others keep away. The probe's success closes the circuit;
its failure opens it again for twice as long, up to `max_open_s`. A passing health check closes
it too (see upstreams.py): the upstream's /readyz answering again is news the breaker takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]
FIRST_OPEN_S = 1.0
MAX_OPEN_S = 30.0


@dataclass
class CircuitBreaker:
    threshold: int = 3
    open_s: float = FIRST_OPEN_S
    max_open_s: float = MAX_OPEN_S
    clock: Callable[[], float] = time.monotonic
    failures: int = 0  # in a row
    opened_at: float = 0.0
    open_for: float = field(init=False)
    _state: BreakerState = "closed"
    _probing: bool = False

    def __post_init__(self) -> None:
        self.open_for = self.open_s

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self.clock() >= self.opened_at + self.open_for:
            self._state, self._probing = "half_open", False
        return self._state

    def admits(self) -> bool:
        """Whether a request may go now (half-open: only while no probe is out)."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._probing)

    def sending(self) -> None:
        """A request goes: when half-open it is the probe, and the others wait for its outcome."""
        if self.state == "half_open":
            self._probing = True

    def succeeded(self) -> None:
        self._close()

    def failed(self) -> None:
        """A connection failure (refused, reset, timed out connecting)."""
        state = self.state
        self.failures += 1
        if state == "half_open":
            self._open(min(self.max_open_s, self.open_for * 2))
        elif state == "closed" and self.failures >= self.threshold:
            self._open(self.open_s)

    def undecided(self) -> None:
        """A request ended telling nothing of the connection (its deadline passed first): a probe
        frees its place for the next one."""
        self._probing = False

    def reset(self) -> None:
        """The upstream proved alive some other way (its /readyz passed)."""
        self._close()

    def seconds_until_probe(self) -> float:
        return max(0.0, self.opened_at + self.open_for - self.clock()) if self._state == "open" else 0.0

    def _open(self, seconds: float) -> None:
        self._state, self._probing = "open", False
        self.opened_at, self.open_for = self.clock(), seconds

    def _close(self) -> None:
        self._state, self._probing = "closed", False
        self.failures, self.open_for = 0, self.open_s
