"""Token buckets: the arithmetic on a virtual clock, the shared budget in a real Redis, and what
happens when Redis refuses, or accepts and never answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from batchserve.server.auth.keys import Identity
from batchserve.server.auth.ratelimit import REDIS_PREFIX, LocalBuckets, RateLimiter, RedisBuckets
from tests.server.keyring import redis_or_skip, unique


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_spends_its_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock)
    decisions = [buckets.take("k", rate=2.0, burst=3) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].retry_after_s == pytest.approx(0.5)
    assert decisions[-1].headers() == {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0", "Retry-After": "1"}
    clock.now += 0.5
    assert buckets.take("k", rate=2.0, burst=3).allowed
    assert not buckets.take("k", rate=2.0, burst=3).allowed
    clock.now += 60  # refills up to the burst, no further
    assert [buckets.take("k", rate=2.0, burst=3).allowed for _ in range(4)] == [True, True, True, False]


def test_buckets_are_per_key() -> None:
    buckets = LocalBuckets(Clock())
    assert buckets.take("a", rate=1.0, burst=1).allowed
    assert not buckets.take("a", rate=1.0, burst=1).allowed
    assert buckets.take("b", rate=1.0, burst=1).allowed


async def test_unlimited_keys_are_not_counted() -> None:
    limiter = RateLimiter()
    assert await limiter.take(Identity("free", frozenset({"classify"}))) is None


@pytest.fixture
def redis_url() -> str:
    return redis_or_skip()


async def test_two_replicas_share_one_budget_in_redis(redis_url: str) -> None:
    name = unique("shared")
    one, two = RedisBuckets(redis_url, timeout_s=2.0), RedisBuckets(redis_url, timeout_s=2.0)
    try:
        decisions = []
        for i in range(10):
            decisions.append(await (one if i % 2 else two).take(name, rate=1 / 3600, burst=6))
        assert sum(d.allowed for d in decisions) == 6
        assert [d.allowed for d in decisions] == [True] * 6 + [False] * 4
        assert decisions[5].remaining == 0
        assert 3000 < decisions[-1].retry_after_s <= 3600
        # Redis forgets a bucket once it would be full again: no key is left behind for ever.
        ttl_ms = await one.redis.pttl(REDIS_PREFIX + name)
        assert 0 < ttl_ms <= 6 * 3600 * 1000 + 1000
    finally:
        await one.redis.delete(REDIS_PREFIX + name)
        await one.close()
        await two.close()


async def test_concurrent_takes_never_overspend(redis_url: str) -> None:
    name = unique("race")
    buckets = [RedisBuckets(redis_url, timeout_s=2.0) for _ in range(4)]
    try:
        decisions = await asyncio.gather(*(buckets[i % 4].take(name, rate=1 / 3600, burst=25) for i in range(100)))
        assert sum(d.allowed for d in decisions) == 25
    finally:
        await buckets[0].redis.delete(REDIS_PREFIX + name)
        for b in buckets:
            await b.close()


async def test_the_bucket_refills_on_redis_time(redis_url: str) -> None:
    name = unique("refill")
    shared = RedisBuckets(redis_url, timeout_s=2.0)
    client = aioredis.from_url(redis_url)
    try:
        assert (await shared.take(name, rate=10.0, burst=1)).allowed
        assert not (await shared.take(name, rate=10.0, burst=1)).allowed
        # Move the bucket's last refill a second into Redis's past: ten tokens' worth, capped at one.
        seconds, micros = await client.time()
        await client.hset(REDIS_PREFIX + name, "ts", str(seconds + micros / 1e6 - 1.0))
        assert (await shared.take(name, rate=10.0, burst=1)).allowed
        assert not (await shared.take(name, rate=10.0, burst=1)).allowed
    finally:
        await client.delete(REDIS_PREFIX + name)
        await client.aclose()
        await shared.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A listening socket nobody reads: the kernel completes the handshake, then nothing ever answers."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


@pytest.mark.parametrize("where", ["refused", "silent"])
async def test_without_redis_each_process_limits_alone_and_nothing_fails(where: str) -> None:
    clock = Clock()
    with silent_server() as silent_port:
        port = _closed_port() if where == "refused" else silent_port
        limiter = RateLimiter(RedisBuckets(f"redis://127.0.0.1:{port}/0", timeout_s=0.2), retry_shared_after_s=2.0,
                              clock=clock)
        key = Identity("capped", frozenset({"classify"}), rate_per_s=1 / 3600, burst=2)
        try:
            decisions = [await limiter.take(key) for _ in range(3)]
            assert [d.allowed for d in decisions if d is not None] == [True, True, False]
            # One failure, then Redis is left alone for a while: the next requests pay no timeout.
            assert limiter.stats.shared_errors_total == 1
            assert limiter.stats.local_decisions_total == 3
            clock.now += 2.0
            await limiter.take(key)
            assert limiter.stats.shared_errors_total == 2  # tried again after the pause
            assert limiter.stats.refused_total == 2
        finally:
            await limiter.close()
