"""The upstreams a web tier forwards to, and which one takes the next request.

Each upstream is in rotation while its /readyz passes (health.py checks it) and its circuit
admits requests (breaker.py). Among those that serve the model version asked for, a request goes
to the one with the least outstanding work (images sent and not answered yet); ties take turns.
An upstream that answered 503/429 with Retry-After is passed over until then while another can
take the request, but not shunned when it is the only one: its refusal was about one moment's
load, and refusing everything here for seconds would make one busy moment a long outage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from batchserve.server.remote.breaker import CircuitBreaker
from batchserve.server.remote.errors import unavailable
from batchserve.server.remote.listing import ModelEntry
from batchserve.serving.errors import ErrorInfo

NOT_CHECKED = "not checked yet"


@dataclass(eq=False)
class Upstream:
    url: str
    breaker: CircuitBreaker
    in_rotation: bool = False
    problem: str | None = NOT_CHECKED  # why it is out of rotation, as logs and 503 answers say it
    outstanding: int = 0  # images sent to it and not answered yet
    paused_until: float = 0.0  # its last Retry-After
    models: dict[tuple[str, int], ModelEntry] = field(default_factory=dict)
    default_model: str | None = None
    listed_at: float | None = None  # when its /v1/models was last read (None: never)
    sent_since_check: bool = False  # a request went to it since its last check (health.py)

    def serves(self, name: str, version: int) -> bool:
        return (name, version) in self.models

    def available(self) -> bool:
        return self.in_rotation and self.breaker.admits()

    def why_not(self) -> str:
        if not self.in_rotation:
            return self.problem or "out of rotation"
        wait = self.breaker.seconds_until_probe()
        return f"circuit open after {self.breaker.failures} connection failures (next try in {wait:.1f} s)"


class UpstreamPool:
    def __init__(self, upstreams: Iterable[Upstream], *, check_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.upstreams = list(upstreams)
        self.check_interval_s = check_interval_s
        self.clock = clock
        self._turn = 0

    @classmethod
    def of(cls, urls: Iterable[str], *, failure_threshold: int, check_interval_s: float) -> UpstreamPool:
        return cls((Upstream(url, CircuitBreaker(threshold=failure_threshold)) for url in urls),
                   check_interval_s=check_interval_s)

    @property
    def ready(self) -> bool:
        """At least one upstream can take requests."""
        return any(u.available() for u in self.upstreams)

    def choose(self, name: str, version: int, *, refused: set[Upstream], tried: set[Upstream]) -> Upstream | None:
        """The upstream for the next try of a request for `name` v`version`: never one that refused
        it, one not tried yet when there is one, not paused when that leaves a choice, and the least
        loaded of those. The breaker learns a request goes (a half-open one's probe). None: nobody can."""
        candidates = [u for u in self.upstreams
                      if u not in refused and u.serves(name, version) and u.available()]
        if not candidates:
            return None
        candidates = [u for u in candidates if u not in tried] or candidates
        now = self.clock()
        candidates = [u for u in candidates if u.paused_until <= now] or candidates
        least = min(u.outstanding for u in candidates)
        tied = [u for u in candidates if u.outstanding == least]
        self._turn += 1
        chosen = tied[self._turn % len(tied)]
        chosen.breaker.sending()
        return chosen

    def unavailable(self, name: str, version: int) -> ErrorInfo:
        """503 upstream_unavailable, saying of each upstream why it cannot take the request."""
        reasons = []
        for u in self.upstreams:
            if u.available() and not u.serves(name, version):
                reasons.append(f"{u.url} does not serve {name} v{version}")
            elif not u.available():
                reasons.append(f"{u.url}: {u.why_not()}")
        waits = [u.breaker.seconds_until_probe() for u in self.upstreams if u.in_rotation]
        wait_s = min([self.check_interval_s, *waits])
        return unavailable("; ".join(reasons) or "none is configured", wait_s)
