"""Per-key rate limits: a token bucket of `burst` tokens refilled at `rate` per second; each
request takes one.

With `--redis-url` the buckets live in Redis, so every replica draws from the same budget: one
Lua script reads, refills and takes atomically, on Redis's own clock (replicas' clocks never
matter). Without Redis each process keeps its own buckets.

When Redis does not answer within its timeout the request is decided by this process's own
bucket instead (fail open to per-process limits: a key gets at most its rate per replica while
Redis is away, never unlimited, and no request fails or waits because of it). The failure is
logged (bounded) and counted, and Redis is left alone for `retry_after_s` so a dead Redis costs
the requests no timeouts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from batchserve.events.ratelog import RateLimitedLog
from batchserve.server.auth.keys import Identity

log = logging.getLogger("batchserve.ratelimit")

REDIS_PREFIX = "batchserve:ratelimit:"

# KEYS[1]: the bucket; ARGV: rate per second, burst, cost. Returns {allowed, tokens left, seconds
# until `cost` tokens are back}; the numbers as strings, since Redis truncates Lua numbers to integers.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
-- A full bucket carries no information: let Redis forget it once it would have refilled.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens), tostring(wait)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # the bucket's size
    remaining: int  # whole tokens left
    retry_after_s: float  # until a token is back, when refused

    def headers(self) -> dict[str, str]:
        headers = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining)}
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers


def _decision(allowed: bool, burst: int, tokens: float, wait_s: float) -> Decision:
    # A hair under a whole token (float refill) still reads as that token.
    return Decision(allowed, burst, max(0, math.floor(tokens + 1e-9)), wait_s)


class LocalBuckets:
    """This process's buckets, by key name (there are as many as keys, no more)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        now = self.clock()
        tokens, then = self._buckets.get(name, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - then) * rate)
        allowed = tokens >= cost
        wait = 0.0
        if allowed:
            tokens -= cost
        else:
            wait = (cost - tokens) / rate
        self._buckets[name] = (tokens, now)
        return _decision(allowed, burst, tokens, wait)


class RedisBuckets:
    """Buckets shared by every replica that names the same Redis."""

    def __init__(self, url: str, *, timeout_s: float, prefix: str = REDIS_PREFIX) -> None:
        self.timeout_s = timeout_s
        self.prefix = prefix
        # No retries (redis-py retries 10 times by default): a slow Redis must cost one timeout at most.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=32, timeout=timeout_s, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.redis = Redis(connection_pool=pool)
        self._script: Any = self.redis.register_script(TOKEN_BUCKET_LUA)

    async def take(self, name: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        """Raises on any Redis failure, TimeoutError after `timeout_s` whatever the cause."""
        reply = await asyncio.wait_for(
            self._script(keys=[self.prefix + name], args=[repr(rate), str(burst), repr(cost)]), self.timeout_s
        )
        allowed, tokens, wait = reply
        return _decision(int(allowed) == 1, burst, float(tokens), float(wait))

    async def close(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()


@dataclass
class LimiterStats:
    refused_total: int = 0
    shared_errors_total: int = 0  # Redis failures
    local_decisions_total: int = 0  # decisions taken by this process's buckets although Redis is configured


class RateLimiter:
    def __init__(self, shared: RedisBuckets | None = None, *, retry_shared_after_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.local = LocalBuckets(clock)
        self.shared = shared
        self.retry_shared_after_s = retry_shared_after_s
        self.clock = clock
        self.stats = LimiterStats()
        self._shared_down_until = -math.inf
        self._warn = RateLimitedLog(log, logging.WARNING, interval_s=30.0)

    async def take(self, who: Identity) -> Decision | None:
        """The decision for one request of `who`; None when the key has no rate limit."""
        if who.rate_per_s is None or who.burst is None:
            return None
        decision = await self._take(who.name, who.rate_per_s, who.burst)
        if not decision.allowed:
            self.stats.refused_total += 1
        return decision

    async def _take(self, name: str, rate: float, burst: int) -> Decision:
        shared = self.shared
        if shared is not None and self.clock() >= self._shared_down_until:
            try:
                return await shared.take(name, rate, burst)
            except Exception as exc:  # noqa: BLE001 - whatever Redis does, the request is decided here
                self._shared_down_until = self.clock() + self.retry_shared_after_s
                self.stats.shared_errors_total += 1
                self._warn("rate limits: Redis failed (%s: %s); deciding with this process's buckets, "
                           "retrying Redis in %g s", type(exc).__name__, str(exc) or "timed out",
                           self.retry_shared_after_s)
        if shared is not None:
            self.stats.local_decisions_total += 1
        return self.local.take(name, rate, burst)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
