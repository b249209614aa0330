"""The remote backend when upstreams refuse, die and come back. These tests kill the session's
upstreams, so they run after test_remote_backend.py (file order), in the order written here."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import statistics
import time
import uuid
from collections import Counter

import httpx
import pytest

from tests.remote.conftest import Cluster, restart_on_same_port

pytestmark = pytest.mark.slow
SIMULATED = {"model": "simulated"}


async def _load(url: str, body: bytes, total: int, concurrency: int, *, after: int | None = None,
                then: object = None) -> tuple[Counter[int], list[str]]:
    """`total` requests at `concurrency` at once; once `after` have been answered, `then()` runs.
    Returns the statuses and the request ids sent."""
    statuses: Counter[int] = Counter()
    ids: list[str] = []
    answered = 0
    queue = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal answered
        for _ in queue:
            request_id = uuid.uuid4().hex
            ids.append(request_id)
            response = await client.post(f"{url}/v1/classify", params=SIMULATED, content=body,
                                         headers={"Content-Type": "image/jpeg", "X-Request-ID": request_id})
            statuses[response.status_code] += 1
            answered += 1
            if answered == after and callable(then):
                then()

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return statuses, ids


def _refusals(server_url: str) -> int:
    """503s the server answered to POSTs (its admission refusals come before routing), from its /metrics."""
    text = httpx.get(f"{server_url}/metrics", timeout=10).text
    pattern = r'^batchserve_http_requests_total\{method="POST",[^}]*status="503"\} ([0-9.e+]+)$'
    return int(sum(float(m) for m in re.findall(pattern, text, flags=re.MULTILINE)))


def test_an_upstream_refusing_with_retry_after_is_tried_again_on_another(cluster: Cluster, chelsea: bytes) -> None:
    """The tight upstream admits one request at a time: bursts of 8 give it several at once, it
    refuses all but one (503 + Retry-After), and the refused ones are answered by the others."""
    before = _refusals(cluster.tight.url)
    statuses, _ = asyncio.run(_load(cluster.web.url, chelsea, 48, 8))
    assert statuses == {200: 48}
    assert _refusals(cluster.tight.url) > before


def _events_of(cluster: Cluster, ids: set[str]) -> int:
    with sqlite3.connect(cluster.web_events) as con:
        rows = con.execute("SELECT request_id FROM api_event_fact").fetchall()
    return sum(1 for (request_id,) in rows if request_id in ids)


def _serves(cluster: Cluster, url: str) -> bool:
    """Whether the web tier's /v1/models says `url` takes requests for the simulated model now."""
    entry = httpx.get(f"{cluster.web.url}/v1/models/simulated", timeout=10).json()["versions"][0]
    return {"url": url, "ready": True} in entry["upstreams"]


def test_a_killed_upstream_costs_no_request_and_rejoins_when_back(cluster: Cluster, chelsea: bytes) -> None:
    victim = cluster.fast_a
    statuses, ids = asyncio.run(_load(cluster.web.url, chelsea, 200, 8, after=40,
                                      then=lambda: victim.signal(signal.SIGKILL)))
    assert victim.process.wait(timeout=10) == -signal.SIGKILL
    assert statuses == {200: 200}  # the requests it had were tried again on the others
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _events_of(cluster, set(ids)) < 200:
        time.sleep(0.1)
    assert _events_of(cluster, set(ids)) == 200  # one event per request, retried or not
    assert not _serves(cluster, victim.url)  # out of rotation

    back = restart_on_same_port(victim).start()
    cluster.fast_a = back  # the session's teardown stops it
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _serves(cluster, back.url):
        time.sleep(0.1)
    assert _serves(cluster, back.url)
    statuses, _ = asyncio.run(_load(cluster.web.url, chelsea, 12, 1))
    assert statuses == {200: 12}
    served = httpx.get(f"{back.url}/v1/models/simulated", timeout=10).json()["versions"][0]["stats"]
    assert served["requests_total"] > 0  # back in rotation: it takes its turn again


def test_with_every_upstream_down_requests_fail_fast_with_503(cluster: Cluster, chelsea: bytes) -> None:
    for upstream in (cluster.fast_a, cluster.fast_b, cluster.tight):
        upstream.signal(signal.SIGKILL)
        upstream.process.wait(timeout=10)
    took: list[float] = []
    for _ in range(20):
        started = time.monotonic()
        answer = httpx.post(f"{cluster.web.url}/v1/classify", params=SIMULATED, content=chelsea,
                            headers={"Content-Type": "image/jpeg"}, timeout=30)
        took.append(time.monotonic() - started)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "upstream_unavailable" and int(answer.headers["Retry-After"]) >= 1
    assert answered_fast(took)

    cluster.real.signal(signal.SIGKILL)  # the last one
    cluster.real.process.wait(timeout=10)
    # Idle, the web tier checks nobody in rotation (health.py): the first request finds it gone.
    answer = httpx.post(f"{cluster.web.url}/v1/classify", params={"model": "efficientnet_lite0"}, content=chelsea,
                        headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "upstream_unavailable"
    assert f"the connection to {cluster.real.url} failed" in answer.json()["error"]["message"]
    readiness = httpx.get(f"{cluster.web.url}/readyz", timeout=10)  # its tries opened the circuit
    assert readiness.status_code == 503 and readiness.json()["status"] == "backend_unavailable"
    answer = httpx.post(f"{cluster.web.url}/v1/classify", params={"model": "efficientnet_lite0"}, content=chelsea,
                        headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "upstream_unavailable"
    assert "efficientnet_lite0" in httpx.get(f"{cluster.web.url}/v1/models", timeout=10).text  # last known


def answered_fast(took: list[float]) -> bool:
    """Nobody waits on a dead upstream: no connect timeout (1 s), no backstop, no retries into the
    void; what is left is this loaded two-core machine's time to answer any request."""
    return statistics.median(took) < 0.3 and max(took) < 1.0
