"""Fallback models: a model that is not loaded, whose queue is full or whose batch fails is answered
by its fallback, and the answer and its event say so; when the fallback cannot answer either the
primary's error stands, unchanged; one hop only; metrics count fallbacks by reason.

Failing batches are real: `broken` models are tiny graphs whose scores are all NaN."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchserve.events.config import EventsConfig
from batchserve.events.journal import Journal
from batchserve.events.store import EventStore
from batchserve.model_repo.errors import ModelNotFound
from batchserve.server.app import create_app
from batchserve.server.options import build_config
from batchserve.serving.cache_config import CacheConfig
from batchserve.serving.classifier import NO_DEADLINE, Classification, Classified, Failed, ImageInput
from batchserve.serving.config import ServingConfig
from batchserve.serving.core import Serving
from batchserve.serving.errors import describe
from batchserve.serving.fallback import StandIn
from batchserve.serving.leases import lease_scope
from batchserve.serving.pressure import queue_refusal
from tests.events.conftest import pg_url, store, store_config  # noqa: F401  (fixtures)
from tests.events.event_helpers import make_event
from tests.serving.model_helpers import add_model, photo

ADMIN_KEY = "fallback-admin-key"


@asynccontextmanager
async def serving_of(repo: Path, models: tuple[str, ...], **config: Any) -> AsyncIterator[Serving]:
    serving = Serving.build(ServingConfig(model_repo=repo, models=models, **config), EventsConfig(enabled=False),
                            retire_grace_s=5.0, cache=CacheConfig(cache="memory"))
    await serving.start()
    try:
        await serving.registry.load_configured()
        yield serving
    finally:
        await serving.close(10.0)


async def classify(serving: Serving, model: str, images: list[ImageInput], k: int = 5) -> Classification:
    """As the HTTP route does: the model (or its stand-in) leased for the request, then classified."""
    with lease_scope():
        return await serving.classifier.classify_images(serving.fallbacks.lease(model, None, k), images, k,
                                                        NO_DEADLINE)


def requests_to(serving: Serving, model: str) -> int:
    return serving.registry.find(model).batcher.stats.requests_total


# ---- the knob ----------------------------------------------------------------------------------
async def test_the_fallback_knob_comes_from_config_toml_env_and_flags(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "alpha", fallback="beta")
    add_model(repo, "beta", fallback="beta")  # itself: ignored
    add_model(repo, "gamma")
    async with serving_of(repo, ("alpha", "beta", "gamma")) as serving:
        fallbacks = serving.fallbacks
        assert [fallbacks.target(m) for m in ("alpha", "beta", "gamma")] == ["beta", None, None]
    # The environment is read once per model (it does not change while a server runs): a new server.
    monkeypatch.setenv("BATCHSERVE_MODEL_ALPHA_FALLBACK", "gamma")
    monkeypatch.setenv("BATCHSERVE_MODEL_GAMMA_FALLBACK", "alpha")
    async with serving_of(repo, ("alpha", "beta", "gamma")) as serving:
        fallbacks = serving.fallbacks
        assert [fallbacks.target(m) for m in ("alpha", "beta", "gamma")] == ["gamma", None, "alpha"]


async def test_a_reloaded_model_names_the_fallback_of_its_new_config(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "alpha", fallback="beta")
    add_model(repo, "beta")
    add_model(repo, "gamma")
    async with serving_of(repo, ("alpha", "beta", "gamma")) as serving:
        assert serving.fallbacks.target("alpha") == "beta"
        config = repo / "alpha" / "config.toml"
        config.write_text(config.read_text().replace('fallback = "beta"', 'fallback = "gamma"'))
        await serving.registry.load("alpha")
        assert serving.fallbacks.target("alpha") == "gamma"


# ---- primary not loaded --------------------------------------------------------------------------
async def test_an_unloaded_model_is_answered_by_its_fallback(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "alpha", fallback="beta")
    add_model(repo, "beta", seed=1)
    async with serving_of(repo, ("alpha", "beta")) as serving:
        await serving.registry.unload("alpha")
        outcome = await classify(serving, "alpha", [photo(1)])
        stats = serving.fallbacks.stats
        cache = serving.cache
        beta_requests = requests_to(serving, "beta")
    assert isinstance(outcome.model, StandIn)
    assert (outcome.model.name, outcome.model.primary, outcome.model.reason) == ("beta", "alpha", "unavailable")
    (result,) = outcome.results
    assert isinstance(result, Classified) and outcome.answered_by(result) is outcome.model
    assert beta_requests == 1
    assert stats.answered == {("alpha", "beta", "unavailable"): 1}
    assert cache is not None and sum(cache.stats.hits.values()) + sum(cache.stats.misses.values()) == 0


async def test_a_model_never_known_is_a_404_whatever_the_fallback_knob(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "beta")
    monkeypatch.setenv("BATCHSERVE_FALLBACK", "beta")  # every model's fallback
    async with serving_of(repo, ("beta",)) as serving:
        with lease_scope(), pytest.raises(ModelNotFound, match="alpah"):
            serving.fallbacks.lease("alpah")
        with lease_scope(), pytest.raises(ModelNotFound):  # a version beta does not have: the client's mistake
            serving.fallbacks.lease("beta", 7)


# ---- primary's batch fails or its queue is full --------------------------------------------------
async def test_a_failing_batch_is_answered_by_the_fallback_but_a_bad_image_is_not(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "alpha", broken=True, fallback="beta")
    add_model(repo, "beta", seed=1)
    bad = ImageInput(b"not an image", "bad.png", "image/png")
    async with serving_of(repo, ("alpha", "beta")) as serving:
        outcome = await classify(serving, "alpha", [photo(2), bad, photo(3)])
        stats = serving.fallbacks.stats
        alpha_batches = serving.registry.find("alpha").batcher.stats.batches_total
    assert outcome.model.name == "alpha" and not isinstance(outcome.model, StandIn)
    first, second, third = outcome.results
    assert isinstance(second, Failed) and second.error.code == "invalid_image" and second.position == 1
    for position, result in ((0, first), (2, third)):
        assert isinstance(result, Classified) and result.position == position
        assert result.stand_in is not None and result.stand_in.name == "beta"
        assert (result.stand_in.primary, result.stand_in.reason) == ("alpha", "batch_failed")
        assert outcome.answered_by(result).name == "beta"
    assert alpha_batches == 1
    assert stats.answered == {("alpha", "beta", "batch_failed"): 2}


async def test_a_full_queue_is_answered_by_the_fallback(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "beta")
    for knob, value in (("MAX_QUEUE_SIZE", "1"), ("MAX_BATCH_SIZE", "1"), ("FALLBACK", "beta")):
        monkeypatch.setenv(f"BATCHSERVE_MODEL_SIMULATED_{knob}", value)
    async with serving_of(repo, ("beta",), simulate_model="400+0") as serving:
        batcher = serving.registry.find("simulated").batcher

        async def until(check: Any, what: str) -> None:
            end = time.monotonic() + 10
            while not check():
                assert time.monotonic() < end, f"timed out waiting for {what}"
                await asyncio.sleep(0.002)

        running = asyncio.create_task(classify(serving, "simulated", [photo(4)]))
        await until(lambda: batcher.stats.inflight_batches == 1, "the first batch to run")
        queued = asyncio.create_task(classify(serving, "simulated", [photo(5)]))
        await until(lambda: batcher.stats.queue_depth == 1, "the second request to queue")
        primary = serving.registry.find("simulated")
        # What admission checks before reading a body: the queue is full, but the fallback has room.
        assert queue_refusal(primary) is not None and serving.fallbacks.covers(primary)
        assert not serving.fallbacks.covers(serving.registry.find("beta"))  # beta has no fallback
        refused = await classify(serving, "simulated", [photo(6)])
        answered = [await running, await queued]
        stats = serving.fallbacks.stats
    (instead,) = refused.results
    assert isinstance(instead, Classified) and instead.stand_in is not None
    assert (instead.stand_in.name, instead.stand_in.reason) == ("beta", "queue_full")
    assert all(isinstance(r, Classified) and r.stand_in is None for o in answered for r in o.results)
    assert stats.answered == {("simulated", "beta", "queue_full"): 1}


# ---- nothing can answer: the primary's error, one hop only ---------------------------------------
async def test_both_gone_the_primary_error_stands_unchanged(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "alpha", fallback="beta")
    add_model(repo, "beta")
    async with serving_of(repo, ("alpha", "beta")) as serving:
        await serving.registry.unload("alpha")
        await serving.registry.unload("beta")
        with lease_scope(), pytest.raises(ModelNotFound) as without_fallback:
            serving.registry.lease("alpha")
        with lease_scope(), pytest.raises(ModelNotFound) as with_fallback:
            serving.fallbacks.lease("alpha", None, 5)
        stats = serving.fallbacks.stats
    assert describe(with_fallback.value) == describe(without_fallback.value)
    assert stats.unanswered == {("alpha", "unavailable"): 1} and not stats.answered


async def test_a_failing_fallback_leaves_the_primary_error(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "alpha", broken=True, fallback="beta")
    add_model(repo, "beta", broken=True, fallback="gamma")
    add_model(repo, "gamma")
    async with serving_of(repo, ("alpha", "beta", "gamma")) as serving:
        with lease_scope():
            alone = await serving.classifier.classify_images(serving.registry.lease("alpha"), [photo(7)], 5,
                                                             NO_DEADLINE, fall_back=False)
        outcome = await classify(serving, "alpha", [photo(7)])
        beta_requests, gamma_requests = requests_to(serving, "beta"), requests_to(serving, "gamma")
        stats = serving.fallbacks.stats
    (result,) = outcome.results
    (own,) = alone.results
    assert isinstance(result, Failed) and isinstance(own, Failed)
    assert result.error == own.error and result.error.code == "internal"
    assert outcome.model.name == "alpha"
    assert beta_requests == 1 and gamma_requests == 0  # beta was asked; its own fallback never is
    assert stats.unanswered == {("alpha", "batch_failed"): 1} and not stats.answered


async def test_a_stand_in_that_fails_never_hands_on_to_its_own_fallback(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "alpha", fallback="beta")
    add_model(repo, "beta", broken=True, fallback="gamma")
    add_model(repo, "gamma")
    async with serving_of(repo, ("alpha", "beta", "gamma")) as serving:
        await serving.registry.unload("alpha")
        outcome = await classify(serving, "alpha", [photo(8)])
        gamma_requests = requests_to(serving, "gamma")
        await serving.registry.unload("beta")
        with lease_scope(), pytest.raises(ModelNotFound, match="alpha"):  # gamma is loaded: still not asked
            serving.fallbacks.lease("alpha")
    (result,) = outcome.results
    assert isinstance(outcome.model, StandIn) and outcome.model.name == "beta"
    assert isinstance(result, Failed) and result.error.code == "internal"
    assert gamma_requests == 0


async def test_a_fallback_with_too_few_classes_for_top_k_is_not_used(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "alpha", fallback="small")
    add_model(repo, "small", classes=10)
    async with serving_of(repo, ("alpha", "small")) as serving:
        await serving.registry.unload("alpha")
        with lease_scope(), pytest.raises(ModelNotFound):
            serving.fallbacks.lease("alpha", None, 20)
        outcome = await classify(serving, "alpha", [photo(9)], k=3)
    assert outcome.model.name == "small" and isinstance(outcome.results[0], Classified)


# ---- over HTTP: answers, events, metrics ----------------------------------------------------------
@asynccontextmanager
async def app_client(repo: Path, tmp_path: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings: dict[str, Any] = {"model_repo": repo, "events": True, "events_path": tmp_path / "events.sqlite3",
                                "journal_dir": tmp_path / "journal", "events_flush_interval_ms": 20,
                                "model_control": "explicit", "admin_key": ADMIN_KEY}
    settings.update(overrides)
    app = create_app(build_config(settings))
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            yield client


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value in a scrape (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def test_http_fallback_answers_and_events_name_the_model_that_answered(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "alpha", fallback="beta")
    add_model(repo, "broken", broken=True, fallback="beta")
    add_model(repo, "beta", seed=1)
    image = photo(10).data
    async with app_client(repo, tmp_path, models=("alpha", "broken", "beta")) as client:
        own = await client.post("/v1/classify?model=alpha", content=image, headers={"X-Request-ID": "own"})
        failing = await client.post("/v1/classify?model=broken", content=image, headers={"X-Request-ID": "failing"})
        unload = await client.post("/v2/repository/models/alpha/unload", headers={"X-Admin-Key": ADMIN_KEY})
        files = [("image", ("a.jpg", image, "image/jpeg")), ("image", ("b.png", b"no image", "image/png"))]
        gone = await client.post("/v1/classify?model=alpha", files=files, headers={"X-Request-ID": "gone"})
        v2 = await client.post("/v2/models/broken/infer", json={"inputs": [
            {"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.0] * (3 * 224 * 224)}]})
        scrape = (await client.get("/metrics")).text
        await client.post("/v2/repository/models/beta/unload", headers={"X-Admin-Key": ADMIN_KEY})
        both = await client.post("/v1/classify?model=alpha", content=image, headers={"X-Request-ID": "both"})
    assert (own.status_code, failing.status_code, unload.status_code, gone.status_code) == (200, 200, 200, 200)
    assert own.json()["model"] == "alpha" and "fallback" not in own.json() and "fallback_for" not in own.json()
    body = failing.json()
    assert (body["model"], body["model_version"], body["fallback"], body["fallback_for"]) == ("beta", 1, True, "broken")
    entry, bad = gone.json()["results"]
    assert (entry["model"], entry["fallback"], entry["fallback_for"]) == ("beta", True, "alpha")
    assert entry["predictions"] == body["predictions"]
    assert bad["error"]["code"] == "invalid_image" and "fallback" not in bad
    assert v2.status_code == 500  # V2 addresses one model: no fallback answers it
    assert both.status_code == 404 and both.json()["error"]["code"] == "model_not_found"
    assert "'alpha'" in both.json()["error"]["message"]
    assert metric(scrape, "batchserve_fallbacks_total", model="broken", fallback="beta", reason="batch_failed") == 1
    assert metric(scrape, "batchserve_fallbacks_total", model="alpha", fallback="beta", reason="unavailable") == 1
    with sqlite3.connect(tmp_path / "events.sqlite3") as db:
        rows = db.execute("SELECT request_id, model_name, model_version, fallback_for, status, error_code "
                          "FROM api_event_fact WHERE route = 'v1' ORDER BY request_id, fact_key").fetchall()
    assert rows == [("both", "alpha", None, None, 404, "model_not_found"),
                    ("failing", "beta", 1, "broken", 200, None),
                    ("gone", "beta", 1, "alpha", 200, None),
                    ("gone", "beta", 1, "alpha", 400, "invalid_image"),
                    ("own", "alpha", 1, None, 200, None)]


# ---- the event store's two columns ----------------------------------------------------------------
async def test_both_stores_and_the_journal_keep_the_hit_flag_and_the_model_asked_for(
        store: EventStore, tmp_path: Path) -> None:  # noqa: F811  (the fixture)
    events = [make_event(0), make_event(1, cache_hit=True, batch_size=None),
              make_event(2, model="beta", fallback_for="alpha")]
    journal = Journal(tmp_path / "journal", 1 << 20)
    journal.append(events)
    (segment,) = sorted((tmp_path / "journal").glob("*.jsonl"))
    old_line = segment.read_bytes().splitlines()[0].replace(b',"cache_hit":false,"fallback_for":null', b"")
    segment.write_bytes(segment.read_bytes() + old_line + b"\n")  # as a build without the columns wrote it
    replayed = journal.read(segment).events
    assert replayed[:3] == events and replayed[3] == events[0]
    assert await store.write(replayed[:3]) == 3
    rows = await store.fetch("SELECT request_id, model_name, cache_hit, fallback_for, batch_size "
                             "FROM api_event_fact ORDER BY request_id")
    assert [(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows] == [
        ("req-0", "tiny", False, None, 1), ("req-1", "tiny", True, None, None), ("req-2", "beta", False, "alpha", 3)]
