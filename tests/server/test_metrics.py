"""GET /metrics: real scrapes parsed with prometheus_client's own parser, and the Grafana
dashboard checked against what the server really exports."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import jpeg_bytes, png_bytes

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "batchserve.json"
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created", "_info")


async def scrape(client) -> dict[tuple[str, frozenset], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_counters_histograms_and_gauges_follow_the_traffic(make_client, chelsea: bytes) -> None:
    async with make_client(events=True, events_flush_interval_ms=20) as client:
        before = await scrape(client)
        for body in (chelsea, png_bytes(), b"not an image"):
            await client.post("/v1/classify?model=tiny", content=body)
        await client.get("/v2/models/tiny")
        await client.get("/v2/models/unknown")
        after = await scrape(client)
        stats = client.app_state.serving.registry.find("tiny").batcher.stats

        requests = "batchserve_http_requests_total"
        classify = {"method": "POST", "route": "/v1/classify", "model": "tiny"}
        assert value(after, requests, **classify, status="200") - value(before, requests, **classify, status="200") == 2
        assert value(after, requests, **classify, status="400") - value(before, requests, **classify, status="400") == 1
        assert value(after, requests, method="GET", route="/v2/models/{name}", model="tiny", status="200") == 1
        # A model that does not exist is never a label value: cardinality stays bounded.
        assert value(after, requests, method="GET", route="/v2/models/{name}", model="", status="404") == 1
        assert value(after, "batchserve_http_request_duration_seconds_count", method="POST", route="/v1/classify",
                     model="tiny") == 3

        tiny = {"model": "tiny", "version": "1"}
        assert value(after, "batchserve_batch_size_count", **tiny) == stats.batches_total == 2
        assert value(after, "batchserve_batch_size_sum", **tiny) == stats.samples_total == 2
        assert value(after, "batchserve_batch_size_bucket", **tiny, le="1.0") == 2
        assert value(after, "batchserve_batch_compute_seconds_count", **tiny) == 2
        assert value(after, "batchserve_batch_queue_wait_seconds_count", **tiny) == 2
        assert value(after, "batchserve_batches_total", **tiny, outcome="ok") == 2
        assert value(after, "batchserve_batcher_requests_total", **tiny) == 2
        assert ("batchserve_queue_depth", frozenset(tiny.items())) in after
        assert value(after, "batchserve_inflight_batches", **tiny) == 0
        assert value(after, "batchserve_model_ready", **tiny) == 1
        # Built on disk but not loaded by this server.
        assert ("batchserve_model_ready", frozenset({"model": "efficientnet_lite0", "version": "1"}.items())) in after
        assert value(after, "batchserve_model_ready", model="efficientnet_lite0", version="1") == 0
        assert value(after, "batchserve_server_ready") == 1
        assert ("batchserve_events_buffered", frozenset()) in after

        # The event writer flushes in the background: wait (bounded) until the scrape shows all 3 events.
        for _ in range(200):
            if value(await scrape(client), "batchserve_events_written_total") >= 3:
                break
            await asyncio.sleep(0.05)
        final = await scrape(client)
        assert value(final, "batchserve_events_written_total") == 3
        assert value(final, "batchserve_events_dropped_total") == 0


async def test_unknown_paths_and_methods_share_one_label(make_client) -> None:
    async with make_client() as client:
        for i in range(5):
            await client.get(f"/no/such/path/{i}")
        await client.request("BREW", "/v1/models")
        samples = await scrape(client)
    routes = {dict(labels)["route"] for name, labels in samples if name == "batchserve_http_requests_total"}
    assert "other" in routes and not any(r.startswith("/no/") for r in routes)
    assert value(samples, "batchserve_http_requests_total", method="GET", route="other", model="", status="404") == 5
    methods = {dict(labels)["method"] for name, labels in samples if name == "batchserve_http_requests_total"}
    assert "BREW" not in methods and "OTHER" in methods


async def test_each_app_has_its_own_registry(make_client) -> None:
    async with make_client() as first, make_client() as second:
        await first.post("/v1/classify", content=jpeg_bytes())
        one, two = await scrape(first), await scrape(second)
    labels = {"method": "POST", "route": "/v1/classify", "model": "tiny", "status": "200"}
    assert value(one, "batchserve_http_requests_total", **labels) == 1
    assert value(two, "batchserve_http_requests_total", **labels) == 0


async def test_openmetrics_is_served_when_asked(make_client) -> None:
    async with make_client() as client:
        response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def _exported(text: str) -> tuple[set[str], dict[str, str]]:
    """Every sample name in a scrape, and each family's type (families with no sample yet included)."""
    names: set[str] = set()
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        names.update(sample.name for sample in family.samples)
    return names, types


def _is_exported(name: str, names: set[str], types: dict[str, str]) -> bool:
    if name in names or name in types:
        return True
    for suffix in SUFFIXES:
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) in ("histogram", "counter", "summary"):
            return True
    return False


async def test_grafana_dashboard_queries_only_metrics_the_server_exports(make_client) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    async with make_client(events=True) as client:
        await client.post("/v1/classify", content=jpeg_bytes())
        names, types = _exported((await client.get("/metrics")).text)
    referenced = set()
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            # Metric names: identifiers followed by a selector, a range or a closing bracket, not labels or functions.
            found = set(re.findall(r"\b((?:batchserve|process)_[a-z0-9_]+)\b", target["expr"]))
            assert found, f"panel {panel['title']!r} queries no batchserve metric: {target['expr']}"
            referenced |= found
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            referenced |= set(re.findall(r"\b(batchserve_[a-z0-9_]+)\b", variable["definition"]))
    missing = sorted(name for name in referenced if not _is_exported(name, names, types))
    assert not missing, f"the dashboard queries metrics the server does not export: {missing}"
    # And the dashboard covers the server's own families (each one at least once).
    ours = {name for name in types if name.startswith("batchserve_")}
    uncovered = sorted(f for f in ours if not any(r == f or r.startswith(f + "_") for r in referenced))
    assert not uncovered, f"exported but on no panel: {uncovered}"
