"""SIGTERM under load: readiness flips at once, in-flight work finishes, events flush, clean exit."""

from __future__ import annotations

import io
import signal
import sqlite3
import threading
import time

import httpx
import pytest
from PIL import Image

from batchserve.loadtest.server_process import ServerProcess

pytestmark = pytest.mark.slow


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 160, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigterm_drains_in_flight_requests_and_flushes_events(tmp_path) -> None:
    server = ServerProcess(
        "--simulate-model", "250+0", "--max-inflight-batches", "1", "--max-batch-size", "2",
        "--drain-delay", "1", "--shutdown-grace", "8", "--events-flush-interval-ms", "50",
        cwd=tmp_path,
    ).start()
    body = small_png()
    results: list[int] = []

    def client() -> None:
        try:
            results.append(httpx.post(server.url + "/v1/classify", content=body, timeout=30).status_code)
        except httpx.HTTPError as exc:  # recorded, so the assertion below names it
            results.append(repr(exc))  # type: ignore[arg-type]

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    queue_depth = lambda: httpx.get(server.url + "/v1/models", timeout=5).json()["models"][0]["stats"]["queue_depth"]  # noqa: E731
    wait_for(lambda: queue_depth() >= 4, what="requests to queue up")

    signalled_at = time.monotonic()
    server.signal(signal.SIGTERM)
    wait_for(lambda: httpx.get(server.url + "/readyz", timeout=5).status_code == 503, what="readiness to drop")
    assert httpx.get(server.url + "/readyz", timeout=5).json()["status"] == "draining"
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200  # still alive while draining

    exit_code = server.wait(timeout=15)
    elapsed = time.monotonic() - signalled_at
    for thread in threads:
        thread.join(timeout=5)
    assert results == [200] * 8, server.log()
    assert exit_code == 0, server.log()
    assert elapsed < 8 + 1, elapsed  # within the grace (plus process start-up slack)
    with sqlite3.connect(tmp_path / "batchserve-events.sqlite3") as db:
        (served,) = db.execute("SELECT count(*) FROM api_event_fact WHERE status = 200").fetchone()
    assert served == 8


def accepts_new_connections(url: str) -> bool:
    try:
        httpx.get(url + "/healthz", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def test_new_requests_after_the_drain_delay_are_refused(tmp_path) -> None:
    server = ServerProcess("--simulate-model", "400+0", "--max-inflight-batches", "1", "--max-batch-size", "1",
                           "--drain-delay", "0.3", "--shutdown-grace", "6", "--no-events", cwd=tmp_path).start()
    with httpx.Client(base_url=server.url, timeout=30) as keepalive:
        assert keepalive.get("/healthz").status_code == 200
        slow = threading.Thread(target=lambda: httpx.post(server.url + "/v1/classify", content=small_png(), timeout=30))
        slow.start()
        wait_for(lambda: keepalive.get("/v1/models").json()["models"][0]["stats"]["inflight_batches"] == 1,
                 what="a batch in flight")
        server.signal(signal.SIGTERM)
        wait_for(lambda: not accepts_new_connections(server.url), what="the listener to close")
        try:
            late = keepalive.post("/v1/classify", content=small_png())
            outcome: object = late.status_code
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        slow.join(timeout=10)
    assert outcome in (503, "ConnectError", "RemoteProtocolError", "ReadError"), outcome
    assert server.wait(timeout=10) == 0
