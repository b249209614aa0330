"""The front door's metrics, read from its own counters at scrape time (nothing on the request path).

No label names a key: key names would grow the label set without bound, and keys themselves
never leave the guard.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from batchserve.server.auth.directory import KeyDirectory
    from batchserve.server.auth.guard import GuardStats
    from batchserve.server.auth.ratelimit import RateLimiter


class AuthCollector(Collector):
    def __init__(self, directory: KeyDirectory, limiter: RateLimiter, guard: GuardStats) -> None:
        self.directory = directory
        self.limiter = limiter
        self.guard = guard

    def collect(self) -> Iterable[Metric]:
        refused = CounterMetricFamily("batchserve_auth_refused", "Requests refused at the front door, by error code.",
                                      labels=["code"])
        for code, count in sorted(self.guard.refused.items()):
            refused.add_metric([code], count)
        yield refused
        stats = self.directory.stats
        yield GaugeMetricFamily("batchserve_api_keys", "Active API keys in the server's key table.", value=stats.keys)
        yield CounterMetricFamily("batchserve_api_key_load_errors",
                                  "Failed reads of the key table (the keys read before stay in force).",
                                  value=stats.load_errors_total)
        if stats.last_loaded is not None:
            yield GaugeMetricFamily("batchserve_api_keys_age_seconds", "Seconds since the key table was last read.",
                                    value=time.monotonic() - stats.last_loaded)
        limits = self.limiter.stats
        yield CounterMetricFamily("batchserve_rate_limited", "Requests refused by a key's rate limit.",
                                  value=limits.refused_total)
        yield CounterMetricFamily("batchserve_rate_limit_redis_errors",
                                  "Redis failures of the shared rate limits (decided by this process instead).",
                                  value=limits.shared_errors_total)
        yield CounterMetricFamily("batchserve_rate_limit_local_decisions",
                                  "Rate-limit decisions this process took alone although Redis is configured.",
                                  value=limits.local_decisions_total)
