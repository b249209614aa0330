"""When a bulk client tries a request again, and how long it waits first.

Retried: 429 (rate limited), 502, 503 (queue full, overloaded, draining, not ready) and 504
(deadline exceeded), and connection failures (refused, reset, timed out). Those say "not now",
whatever the image. Every other error status is the image's answer and is not retried: 4xx are
about the request, 500 is a bug that would answer the same again.

The wait honours the server's `Retry-After` (seconds or an HTTP date), plus up to 10 % so clients
refused together do not all return in the same instant; without one it is exponential backoff with
full jitter (a random wait between 0 and base·2^attempt, capped), which spreads retries best.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["RETRIED_STATUSES", "RetryPolicy", "parse_retry_after"]

RETRIED_STATUSES = frozenset({429, 502, 503, 504})


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5  # tries after the first
    base_s: float = 0.5  # backoff scale without Retry-After
    cap_s: float = 30.0  # longest backoff without Retry-After
    max_retry_after_s: float = 300.0  # a longer Retry-After is clamped to this
    rng: random.Random = field(default_factory=random.Random, compare=False)  # tests pass a seeded one

    def should_retry(self, attempt: int) -> bool:
        """`attempt` counts from 1 (the first try) and is the one that just failed."""
        return attempt <= self.max_retries

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after try number `attempt` (from 1) failed."""
        if retry_after is not None:
            wait = min(retry_after, self.max_retry_after_s)
            return wait * (1 + 0.1 * self.rng.random())
        return self.rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
