"""Relative load profiles: the server's capacity from a closed-loop calibration, and the
constant-throughput load that offers a fraction of it.

The calibration runs the profile's users back to back (no wait) for a bounded time: the
successful requests/s they reach is the capacity at that concurrency. The measured phase then
offers `rate` x capacity at constant throughput: each of U users sends r requests/s (from a
random start phase, so the users do not send in step; locustfile.py), and U x r is the offered
rate. A user whose request outlasts 1/r falls behind (the pacing does not catch up, as Locust's
`constant_throughput`), so U is chosen large enough that 1/r stays well above the slowest
latency the calibration saw at saturation, which is above what a lighter load meets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from batchserve.loadtest.report import Measured

LATENCY_HEADROOM = 2.0
"""Each user's interval 1/r is at least this many times the calibration's p99 latency."""
MAX_USERS_PER_CALIBRATION_USER = 20
"""Bound on U against the calibration's concurrency: a wild p99 must not start thousands of users.
When it binds, a user's interval may be too short and the achieved rate shows it."""


@dataclass(frozen=True)
class Calibration:
    users: int
    duration_s: float
    measured: Measured

    @property
    def capacity_rps(self) -> float:
        """Successful requests/s at saturation; 0 when nothing succeeded."""
        return self.measured.success_rps

    @property
    def latency_ms(self) -> float:
        """The latency pacing must leave room for: p99 at saturation, or by Little's law the mean
        (users / throughput) when Locust reported no percentile."""
        m = self.measured
        if m.p99_ms is not None and m.p99_ms > 0:
            return m.p99_ms
        return 1000.0 * self.users / self.capacity_rps if self.capacity_rps > 0 else 0.0


@dataclass(frozen=True)
class Pacing:
    """The constant-throughput phase: `users` each sending `user_rps` requests/s."""

    rate: float
    offered_rps: float
    users: int
    user_rps: float


def plan_pacing(calibration: Calibration, rate: float) -> Pacing:
    """The users and per-user rate that offer `rate` x the calibrated capacity."""
    capacity = calibration.capacity_rps
    if capacity <= 0:
        raise ValueError("the calibration measured no capacity to offer a fraction of")
    offered = rate * capacity
    wanted = math.ceil(offered * LATENCY_HEADROOM * calibration.latency_ms / 1000.0)
    users = max(1, min(wanted, MAX_USERS_PER_CALIBRATION_USER * calibration.users))
    return Pacing(rate=rate, offered_rps=offered, users=users, user_rps=offered / users)
