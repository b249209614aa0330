"""The result cache: a repeated image is answered from its cached scores, with no decode and no
batch; one entry answers any top_k (V1 and V2); memory stays under its byte bound (least recently
used out first) and entries expire; a replaced or unloaded version loses its entries; fallback
answers are never cached; Redis is shared by every process that names it, and a Redis that is
away costs no request anything but the cache."""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from batchserve.events.config import EventsConfig
from batchserve.jobs.options import WORKER_OPTIONS, worker_settings
from batchserve.loadtest.server_process import free_port
from batchserve.model_repo.synthetic import build_tiny
from batchserve.server.app import create_app
from batchserve.server.options import build_config, from_sources
from batchserve.serving.cache import INLINE_HASH_BYTES, CachedScores, CacheStats, digests_of
from batchserve.serving.cache_config import CacheConfig
from batchserve.serving.cache_memory import ENTRY_OVERHEAD_BYTES, MemoryStore
from batchserve.serving.classifier import NO_DEADLINE, Classified
from batchserve.serving.config import ServingConfig
from batchserve.serving.core import Serving
from batchserve.serving.leases import lease_scope
from tests.events.tcp_proxy import TcpProxy
from tests.serving.model_helpers import add_model, photo, rebuild

REDIS_URL = "redis://127.0.0.1:6379/0"
MEMORY = CacheConfig(cache="memory")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    add_model(repo, "alpha")
    return repo


@asynccontextmanager
async def serving_of(repo: Path, cache: CacheConfig = MEMORY, models: tuple[str, ...] = ("alpha",),
                     sweep_s: float = 1.0) -> AsyncIterator[Serving]:
    serving = Serving.build(ServingConfig(model_repo=repo, models=models), EventsConfig(enabled=False),
                            retire_grace_s=5.0, cache=cache)
    serving.cache_sweep_s = sweep_s
    await serving.start()
    try:
        await serving.registry.load_configured()
        yield serving
    finally:
        await serving.close(10.0)


async def classify(serving: Serving, model: str, data: Any, k: int = 5) -> Classified:
    with lease_scope():
        outcome = await serving.classifier.classify_images(serving.registry.lease(model), [data], k, NO_DEADLINE)
    (result,) = outcome.results
    assert isinstance(result, Classified), result
    return result


def memory_of(serving: Serving) -> MemoryStore:
    assert serving.cache is not None and isinstance(serving.cache.store, MemoryStore)
    return serving.cache.store


async def until(check: Any, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# ---- memory: the request path ------------------------------------------------------------------
async def test_a_repeated_image_is_answered_from_the_cache_without_decode_or_batch(repo: Path) -> None:
    image = photo(1)
    async with serving_of(repo) as serving:
        first = await classify(serving, "alpha", image)
        stats = serving.registry.find("alpha").batcher.stats
        before = (stats.requests_total, stats.batches_total, stats.samples_total)
        # A hit needs no decode thread: with the pool gone, only the cache can answer.
        serving.classifier.decode_pool.shutdown(wait=True)
        second = await classify(serving, "alpha", image)
        after = (stats.requests_total, stats.batches_total, stats.samples_total)
        cache_stats = serving.cache.stats if serving.cache else None
    assert first.cached is None and first.batch_size == 1 and first.decoded is not None
    assert second.cached is not None and second.decoded is None and second.sent == image
    assert second.cached.sha256 == hashlib.sha256(image.data).hexdigest() == first.decoded.sha256
    assert (second.batch_size, second.queue_ms, second.inference_ms) == (0, 0.0, 0.0)
    assert second.predictions == first.predictions
    assert (second.cached.scores.width, second.cached.scores.height, second.cached.scores.format) == (64, 48, "jpeg")
    assert after == before == (1, 1, 1)
    assert cache_stats is not None and cache_stats.hits["alpha"] == 1 and cache_stats.misses["alpha"] == 1


async def test_one_entry_answers_any_top_k(repo: Path) -> None:
    image = photo(2)
    async with serving_of(repo) as serving:
        five = await classify(serving, "alpha", image, k=5)
        every = await classify(serving, "alpha", image, k=1000)
        one = await classify(serving, "alpha", image, k=1)
        batches = serving.registry.find("alpha").batcher.stats.batches_total
    assert five.cached is None and every.cached is not None and one.cached is not None
    assert batches == 1
    assert len(every.predictions) == 1000 and every.predictions[:5] == five.predictions
    assert one.predictions == five.predictions[:1]
    assert sum(p.score for p in every.predictions) == pytest.approx(1.0, abs=1e-4)


async def test_several_images_of_one_request_mix_hits_and_misses_in_order(repo: Path) -> None:
    seen, unseen = photo(3), photo(4)
    async with serving_of(repo) as serving:
        await classify(serving, "alpha", seen)
        with lease_scope():
            outcome = await serving.classifier.classify_images(
                serving.registry.lease("alpha"), [unseen, seen, unseen], 3, NO_DEADLINE)
        samples = serving.registry.find("alpha").batcher.stats.samples_total
    results = outcome.results
    assert [r.position for r in results] == [0, 1, 2]
    assert all(isinstance(r, Classified) for r in results)
    assert [r.cached is not None for r in results if isinstance(r, Classified)] == [False, True, False]
    assert samples == 1 + 2  # the first request's image, then only the two unseen ones


def test_large_images_are_hashed_off_the_event_loop() -> None:
    small, large = b"x" * 1000, os.urandom(INLINE_HASH_BYTES + 1)
    gone = ThreadPoolExecutor(1)
    gone.shutdown()

    async def digests(blobs: list[bytes], pool: ThreadPoolExecutor) -> list[str]:
        return await digests_of(blobs, pool)

    # A small request never touches the pool (it is shut down: a hand-off would raise).
    assert asyncio.run(digests([small], gone)) == [hashlib.sha256(small).hexdigest()]
    with pytest.raises(RuntimeError):
        asyncio.run(digests([large], gone))
    with ThreadPoolExecutor(1) as pool:
        assert asyncio.run(digests([small, large], pool)) == [hashlib.sha256(b).hexdigest() for b in (small, large)]


# ---- memory: bounds ----------------------------------------------------------------------------
def scores(seed: int) -> CachedScores:
    return CachedScores.of(np.random.default_rng(seed).normal(size=1000).astype(np.float32), 10, 10, "png")


def test_memory_is_bounded_and_the_least_recently_used_answer_goes_first() -> None:
    size = 1000 * 4 + ENTRY_OVERHEAD_BYTES
    stats = CacheStats()
    store = MemoryStore(3 * size, ttl_s=0, stats=stats)
    for name in ("a", "b", "c"):
        store.put("m", 1, name, scores(ord(name)))
    assert store.get("m", 1, "a") is not None  # a is now the most recently used
    store.put("m", 1, "d", scores(4))
    assert store.bytes == 3 * size <= store.max_bytes and len(store) == 3
    assert store.get("m", 1, "b") is None
    assert all(store.get("m", 1, name) is not None for name in ("a", "c", "d"))
    assert stats.evictions == {"capacity": 1}
    store.put("m", 1, "d", scores(5))  # the same key again replaces, and counts once
    assert store.bytes == 3 * size and len(store) == 3
    np.testing.assert_array_equal(store.get("m", 1, "d").logits, scores(5).logits)  # type: ignore[union-attr]


async def test_cache_max_bytes_bounds_the_cache_of_a_serving_core(repo: Path) -> None:
    entry = 1000 * 4 + ENTRY_OVERHEAD_BYTES  # tiny's 1000 float32 scores
    bounded = CacheConfig(cache="memory", cache_max_bytes=2 * entry)
    async with serving_of(repo, cache=bounded) as serving:
        for seed in (30, 31, 32):
            await classify(serving, "alpha", photo(seed))
        store = memory_of(serving)
        evictions = dict(serving.cache.stats.evictions) if serving.cache else None
        entries, held = len(store), store.bytes
        oldest_again = await classify(serving, "alpha", photo(30))
        newest_again = await classify(serving, "alpha", photo(32))
    assert store.max_bytes == 2 * entry and (entries, held) == (2, 2 * entry)
    assert evictions == {"capacity": 1}
    assert oldest_again.cached is None and newest_again.cached is not None


def test_an_answer_larger_than_the_whole_cache_is_not_kept() -> None:
    store = MemoryStore(1000, ttl_s=0, stats=CacheStats())
    store.put("m", 1, "a", scores(1))
    assert len(store) == 0 and store.bytes == 0


def test_entries_expire_after_the_ttl() -> None:
    now = [100.0]
    stats = CacheStats()
    store = MemoryStore(1 << 20, ttl_s=60, stats=stats, clock=lambda: now[0])
    store.put("m", 1, "a", scores(1))
    now[0] += 59.9
    assert store.get("m", 1, "a") is not None
    now[0] += 0.2
    assert store.get("m", 1, "a") is None
    assert stats.evictions == {"expired": 1} and store.bytes == 0 and len(store) == 0


# ---- versions ----------------------------------------------------------------------------------
async def test_a_rebuilt_version_drops_its_entries_before_it_answers(repo: Path) -> None:
    image = photo(5)
    async with serving_of(repo) as serving:
        old = await classify(serving, "alpha", image)
        rebuild(repo, "alpha", seed=7)  # same name and version, another graph
        await serving.registry.load("alpha")
        new = await classify(serving, "alpha", image)
        again = await classify(serving, "alpha", image)
        store, cache_stats = memory_of(serving), serving.cache.stats if serving.cache else None
        entries = len(store)
    assert new.cached is None, "the old graph's answer was served for the new graph"
    assert not np.allclose(new.logits, old.logits)
    assert again.cached is not None and np.array_equal(again.logits, new.logits)
    assert cache_stats is not None and cache_stats.evictions["version"] == 1 and entries == 1


async def test_a_newer_version_taking_over_drops_the_old_versions_entries(repo: Path) -> None:
    image = photo(7)
    digest = hashlib.sha256(image.data).hexdigest()
    async with serving_of(repo, sweep_s=0.02) as serving:
        old = await classify(serving, "alpha", image)
        store = memory_of(serving)
        (repo / "alpha" / "2").mkdir()
        onnx.save(build_tiny(9), str(repo / "alpha" / "2" / "model.onnx"))  # the policy serves the newest
        await serving.registry.load("alpha")
        assert [m.version for m in serving.registry.loaded()] == [2]
        await until(lambda: store.get("alpha", 1, digest) is None, "the sweep to drop version 1's entry")
        new = await classify(serving, "alpha", image)
        again = await classify(serving, "alpha", image)
        kept = len(store)
        evictions = serving.cache.stats.evictions if serving.cache else None
    assert new.cached is None and not np.allclose(new.logits, old.logits)  # version 2 computed its own
    assert again.cached is not None and kept == 1
    assert evictions is not None and evictions["version"] == 1


async def test_an_unloaded_model_loses_its_entries(repo: Path) -> None:
    add_model(repo, "beta", seed=3)
    async with serving_of(repo, models=("alpha", "beta"), sweep_s=0.02) as serving:
        await classify(serving, "alpha", photo(6))
        await classify(serving, "beta", photo(6))
        store = memory_of(serving)
        assert len(store) == 2
        await serving.registry.unload("alpha")
        await until(lambda: len(store) == 1, "the sweep to drop alpha's entry")
        assert store.get("beta", 1, hashlib.sha256(photo(6).data).hexdigest()) is not None
        assert serving.cache is not None and serving.cache.stats.evictions["version"] == 1


async def test_fallback_answers_are_never_cached(repo: Path) -> None:
    add_model(repo, "broken", broken=True, fallback="alpha")
    image = photo(8)
    async with serving_of(repo, models=("alpha", "broken")) as serving:
        first = await classify(serving, "broken", image)
        second = await classify(serving, "broken", image)
        entries = len(memory_of(serving))
        own = await classify(serving, "alpha", image)  # alpha asked for itself: its own answer, not cached before
    for answer in (first, second):
        assert answer.stand_in is not None and answer.stand_in.name == "alpha" and answer.cached is None
    assert entries == 0
    assert own.cached is None and own.stand_in is None


# ---- over HTTP ---------------------------------------------------------------------------------
@asynccontextmanager
async def app_client(repo: Path, tmp_path: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings: dict[str, Any] = {"model_repo": repo, "models": ("alpha",), "events": False,
                                "events_path": tmp_path / "events.sqlite3", "journal_dir": tmp_path / "journal",
                                "cache": "memory"}
    settings.update(overrides)
    app = create_app(build_config(settings))
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            client.app_state = app.state["app_state"]  # type: ignore[attr-defined]
            yield client


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value in a scrape (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def test_http_a_hit_says_so_in_its_answer_and_its_event(repo: Path, tmp_path: Path) -> None:
    image, other = photo(10), photo(11)
    events = tmp_path / "events.sqlite3"
    async with app_client(repo, tmp_path, events=True, events_flush_interval_ms=20) as client:
        miss = await client.post("/v1/classify?model=alpha", content=image.data, headers={"X-Request-ID": "r1"})
        stats = client.app_state.serving.registry.find("alpha").batcher.stats  # type: ignore[attr-defined]
        batches = stats.batches_total
        hit = await client.post("/v1/classify?model=alpha&top_k=2", content=image.data,
                                headers={"X-Request-ID": "r2"})
        assert stats.batches_total == batches
        files = [("image", ("a.jpg", image.data, "image/jpeg")), ("image", ("b.jpg", other.data, "image/jpeg"))]
        mixed = await client.post("/v1/classify?model=alpha", files=files, headers={"X-Request-ID": "r3"})
        scrape = (await client.get("/metrics")).text
    assert miss.status_code == hit.status_code == mixed.status_code == 200
    assert "cache" not in miss.json() and "fallback" not in miss.json()
    assert hit.json()["cache"] == "hit" and hit.json()["batch_size"] == 0
    assert hit.json()["predictions"] == miss.json()["predictions"][:2]
    entries = mixed.json()["results"]
    assert [e.get("cache") for e in entries] == ["hit", None] and entries[1]["batch_size"] == 1
    assert metric(scrape, "batchserve_cache_hits_total", model="alpha") == 2
    assert metric(scrape, "batchserve_cache_misses_total", model="alpha") == 2
    assert metric(scrape, "batchserve_cache_entries") == 2
    assert metric(scrape, "batchserve_cache_bytes") == 2 * (1000 * 4 + ENTRY_OVERHEAD_BYTES)
    with sqlite3.connect(events) as db:
        rows = db.execute(
            "SELECT f.request_id, f.cache_hit, f.batch_size, f.status, i.sha256, i.width, i.height, i.content_type "
            "FROM api_event_fact f JOIN image_dim i USING (image_key) ORDER BY f.request_id, i.filename").fetchall()
    digest = hashlib.sha256(image.data).hexdigest()
    assert rows[:3] == [("r1", 0, 1, 200, digest, 64, 48, "image/jpeg"),
                        ("r2", 1, None, 200, digest, 64, 48, "image/jpeg"),
                        ("r3", 1, None, 200, digest, 64, 48, "image/jpeg")]
    assert rows[3][:3] == ("r3", 0, 1)


async def test_v2_answers_from_the_cache_with_the_whole_score_vector(repo: Path, tmp_path: Path) -> None:
    image = photo(12)
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                   "data": [base64.b64encode(image.data).decode()]}],
                       "outputs": [{"name": "logits"}]}).encode()
    async with app_client(repo, tmp_path) as client:
        first = await client.post("/v2/models/alpha/infer", content=body)
        stats = client.app_state.serving.registry.find("alpha").batcher.stats  # type: ignore[attr-defined]
        batches = stats.batches_total
        second = await client.post("/v2/models/alpha/infer", content=body)
        v1 = await client.post("/v1/classify?model=alpha&top_k=1", content=image.data)
        assert stats.batches_total == batches == 1
    assert first.status_code == second.status_code == 200
    logits = [np.array(r.json()["outputs"][0]["data"], dtype=np.float32) for r in (first, second)]
    assert logits[0].shape == (1000,) and np.array_equal(logits[0], logits[1])
    assert v1.json()["cache"] == "hit" and v1.json()["predictions"][0]["class_id"] == int(np.argmax(logits[0]))


# ---- Redis -------------------------------------------------------------------------------------
@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"batchserve-test:{uuid.uuid4().hex}:"
    yield prefix
    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def redis_keys(prefix: str) -> list[bytes]:
    redis = Redis.from_url(REDIS_URL)
    try:
        return [key async for key in redis.scan_iter(match=prefix + "*")]
    finally:
        await redis.aclose()


async def test_two_servers_on_one_redis_share_their_answers(repo: Path, tmp_path: Path, redis_prefix: str) -> None:
    image = photo(20)
    shared = {"cache": "redis", "cache_redis_url": REDIS_URL, "cache_key_prefix": redis_prefix}
    async with app_client(repo, tmp_path / "a", **shared) as first, \
            app_client(repo, tmp_path / "b", **shared) as second:
        miss = await first.post("/v1/classify?model=alpha", content=image.data)
        end = time.monotonic() + 10
        while not await redis_keys(redis_prefix):  # written in the background, after the answer
            assert time.monotonic() < end, "the answer never reached Redis"
            await asyncio.sleep(0.01)
        hit = await second.post("/v1/classify?model=alpha&top_k=3", content=image.data)
        second_batches = second.app_state.serving.registry.find("alpha").batcher.stats  # type: ignore[attr-defined]
        assert second_batches.requests_total == 0
    assert miss.status_code == hit.status_code == 200
    assert "cache" not in miss.json() and hit.json()["cache"] == "hit"
    assert hit.json()["predictions"] == miss.json()["predictions"][:3]
    digest = hashlib.sha256(image.data).hexdigest()
    assert await redis_keys(redis_prefix) == [f"{redis_prefix}alpha:1:{digest}".encode()]


async def test_a_redis_that_is_not_there_costs_the_cache_only(repo: Path, tmp_path: Path) -> None:
    image = photo(21)
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with app_client(repo, tmp_path, cache="redis", cache_redis_url=nowhere) as client:
        answers = [await client.post("/v1/classify?model=alpha", content=image.data) for _ in range(3)]
        scrape = (await client.get("/metrics")).text
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all("cache" not in a.json() for a in answers)
    # One failed call, then Redis is left alone for a while instead of costing every request a try.
    assert metric(scrape, "batchserve_cache_store_errors_total") == 1
    assert metric(scrape, "batchserve_cache_misses_total", model="alpha") == 3


async def test_redis_cut_mid_service_then_back(repo: Path, tmp_path: Path, redis_prefix: str) -> None:
    proxy = TcpProxy("127.0.0.1", 6379)
    port = await proxy.start()
    image = photo(22)
    try:
        async with app_client(repo, tmp_path, cache="redis", cache_redis_url=f"redis://127.0.0.1:{port}/0",
                              cache_key_prefix=redis_prefix) as client:
            cache = client.app_state.serving.cache  # type: ignore[attr-defined]
            cache.retry_after_s = 0.2
            await client.post("/v1/classify?model=alpha", content=image.data)
            await until(lambda: not cache._writes, "the background write")
            await proxy.cut()
            during = await client.post("/v1/classify?model=alpha", content=image.data)
            errors = cache.stats.store_errors
            await proxy.restore()
            end = time.monotonic() + 10
            while True:  # Redis is tried again once the retry delay has passed
                after = await client.post("/v1/classify?model=alpha", content=image.data)
                if after.json().get("cache") == "hit":
                    break
                assert time.monotonic() < end, "the cache never came back"
                await asyncio.sleep(0.05)
    finally:
        await proxy.close()
    assert during.status_code == 200 and "cache" not in during.json()
    assert errors >= 1


def test_the_worker_and_the_server_take_the_cache_flags() -> None:
    given = {"queue_name": "shop", "cache": "redis", "cache_redis_url": REDIS_URL, "cache_max_bytes": 1 << 20}
    worker = worker_settings(argparse.Namespace(**({o.name: None for o in WORKER_OPTIONS} | given)), environ={})
    server = from_sources({}, environ={"BATCHSERVE_CACHE": "memory", "BATCHSERVE_CACHE_TTL_S": "30"})
    assert (worker.cache.cache, worker.cache.cache_redis_url, worker.cache.cache_max_bytes) == ("redis", REDIS_URL,
                                                                                                1 << 20)
    assert (server.cache.cache, server.cache.cache_ttl_s) == ("memory", 30.0)
    with pytest.raises(ValueError, match="--cache-redis-url"):
        from_sources({"cache": "redis"}, environ={})
