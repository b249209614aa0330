"""Admission before work: refusals that cost no body read and no decode, bounds that hold, and a
deadline on slow bodies, through the real app (in process) and a real server (over sockets).

The simulated device makes the queue deterministic: a batch that costs a minute keeps whatever
was queued behind it queued for as long as a test needs.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from batchserve.loadtest.server_process import ServerProcess
from batchserve.server.refusal_pacing import BURST_S, RefusalPacer
from tests.server.conftest import png_bytes

# One batch at a time, one sample per batch, a minute per batch: the first request runs (for
# the whole test), the next ones wait in the queue.
BLOCKED_DEVICE = {"models": (), "simulate_model": "60000+0", "max_batch_size": 1, "max_inflight_batches": 1,
                  "shutdown_grace": 2.0, "drain_delay": 0.0}


class UnfinishedBody:
    """A request body that sends its first chunk and then nothing, ever; it counts what was pulled."""

    def __init__(self, first: bytes) -> None:
        self.first = first
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.pulled += 1
        yield self.first
        self.pulled += 1
        await asyncio.Event().wait()
        yield b""  # never reached


async def eventually(check, what: str, timeout: float = 20.0) -> None:
    """Wait for a state of the app; the timeout only bounds a broken run."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


def assert_overloaded(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "overloaded"
    assert int(response.headers["retry-after"]) >= 1


def event_rows(path: Path) -> list[tuple[str, int, str | None]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT request_id, status, error_code FROM api_event_fact ORDER BY request_id").fetchall()


async def test_a_full_queue_is_refused_without_reading_the_body(make_client, tmp_path: Path) -> None:
    events = tmp_path / "events.sqlite3"
    async with make_client(**BLOCKED_DEVICE, max_queue_size=1, events=True, events_path=events,
                           events_flush_interval_ms=20) as client:
        batcher = client.app_state.serving.registry.find("simulated").batcher
        running = asyncio.create_task(client.post("/v1/classify", content=png_bytes()))
        await eventually(lambda: batcher.stats.inflight_batches == 1, "the first batch to run")
        queued = asyncio.create_task(client.post("/v1/classify", content=png_bytes()))
        await eventually(lambda: batcher.stats.queue_depth == 1, "the queue to fill")

        body = UnfinishedBody(png_bytes())
        v1 = await asyncio.wait_for(
            client.post("/v1/classify", content=body, headers={"Content-Type": "image/png", "X-Request-ID": "v1"}),
            10)
        v2_body = UnfinishedBody(b'{"inputs": [')
        v2 = await asyncio.wait_for(
            client.post("/v2/models/simulated/infer", content=v2_body, headers={"X-Request-ID": "v2"}), 10)
        versioned = await client.post("/v2/models/simulated/versions/1/infer", content=b"{}")
        # What admission cannot refuse for a full queue is left to the route's own answer.
        unknown = await client.post("/v1/classify?model=nope", content=png_bytes())
        wrong_method = await client.get("/v1/classify")
        health = await client.get("/healthz")
        metrics = (await client.get("/metrics")).text
        running.cancel()
        queued.cancel()
    assert_overloaded(v1)
    assert versioned.status_code == 503 and "queued" in versioned.json()["error"]
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert wrong_method.status_code == 405
    assert body.pulled == 0, "the refused request's body was read"
    assert v2.status_code == 503 and v2_body.pulled == 0
    assert "queue" in v2.json()["error"] and int(v2.headers["retry-after"]) >= 1
    assert health.status_code == 200
    assert 'batchserve_admission_refused_total{reason="queue_full"} 3.0' in metrics
    refused = {row[0]: row[1:] for row in event_rows(events)}
    assert refused["v1"] == (503, "overloaded") and refused["v2"] == (503, "overloaded")


async def test_concurrent_requests_are_bounded_and_their_places_come_back(make_client, tmp_path: Path) -> None:
    events = tmp_path / "events.sqlite3"
    async with make_client(**{**BLOCKED_DEVICE, "simulate_model": "300+0"}, max_queue_size=64,
                           max_concurrent_requests=2, events=True, events_path=events,
                           events_flush_interval_ms=20) as client:
        gate = client.app_state.admission
        first = [asyncio.create_task(client.post("/v1/classify", content=png_bytes())) for _ in range(2)]
        await eventually(lambda: gate.requests.in_use == 2, "two requests admitted")
        body = UnfinishedBody(png_bytes())
        third = await asyncio.wait_for(client.post("/v1/classify", content=body, headers={"X-Request-ID": "third"}),
                                       10)
        health, ready = await client.get("/healthz"), await client.get("/readyz")
        answered = await asyncio.gather(*first)
        assert gate.requests.in_use == 0
        after = await client.post("/v1/classify", content=png_bytes())
    assert_overloaded(third)
    assert body.pulled == 0
    assert "2 of 2 classification requests" in third.json()["error"]["message"]
    assert (health.status_code, ready.status_code) == (200, 200)
    assert [r.status_code for r in answered] == [200, 200]
    assert after.status_code == 200, after.text
    assert gate.requests.refused_total == 1
    rows = event_rows(events)
    assert ("third", 503, "overloaded") in rows and sum(1 for row in rows if row[1] == 200) == 3


async def test_images_waiting_for_a_decode_thread_are_bounded(make_client, tmp_path: Path) -> None:
    """Two images fill the bound while the one decode thread is held; a third is refused, recorded,
    and the first two are then answered."""
    events = tmp_path / "events.sqlite3"
    async with make_client(models=(), simulate_model="1+0", max_pending_decodes=2, preprocess_threads=1,
                           events=True, events_path=events, events_flush_interval_ms=20) as client:
        classifier = client.app_state.serving.classifier
        with held_threads(classifier.decode_pool, 1) as release:
            waiting = asyncio.create_task(client.post(
                "/v1/classify", files=[("image", ("a.png", png_bytes(), "image/png")),
                                       ("image", ("b.png", png_bytes(), "image/png"))]))
            await eventually(lambda: classifier.pending_decodes.in_use == 2, "two images waiting")
            refused = await client.post("/v1/classify", content=png_bytes(), headers={"X-Request-ID": "third"})
            release()
            done = await waiting
    assert_overloaded(refused)
    assert done.status_code == 200 and len(done.json()["results"]) == 2
    assert classifier.pending_decodes.in_use == 0
    assert ("third", 503, "overloaded") in event_rows(events)


class held_threads:  # noqa: N801 - used as a context manager, read as a phrase
    """Occupies `count` threads of a pool until released, so work handed to it waits."""

    def __init__(self, pool, count: int) -> None:
        import threading

        self.pool, self.count = pool, count
        self.go = threading.Event()
        self.started = threading.Semaphore(0)

    def __enter__(self):
        for _ in range(self.count):
            self.pool.submit(self._hold)
        for _ in range(self.count):
            assert self.started.acquire(timeout=10), "a decode thread never started"
        return self.go.set

    def _hold(self) -> None:
        self.started.release()
        self.go.wait(60)

    def __exit__(self, *exc: object) -> None:
        self.go.set()


async def test_a_request_past_its_deadline_is_never_decoded(make_client) -> None:
    """Not an image at all: decoding it would answer 400 invalid_image; the deadline comes first."""
    async with make_client(models=(), simulate_model="1+0") as client:
        expired = await client.post("/v1/classify?timeout_ms=0.001", content=b"certainly not an image",
                                    headers={"Content-Type": "image/png"})
        fresh = await client.post("/v1/classify?timeout_ms=60000", content=b"certainly not an image",
                                  headers={"Content-Type": "image/png"})
    assert expired.status_code == 504, expired.text
    assert expired.json()["error"]["code"] == "deadline_exceeded"
    assert fresh.status_code == 400 and fresh.json()["error"]["code"] == "invalid_image"


async def test_a_slow_body_gets_408_while_others_are_served(make_client, tmp_path: Path) -> None:
    events = tmp_path / "events.sqlite3"
    async with make_client(models=(), simulate_model="1+0", body_read_timeout_s=0.3, events=True,
                           events_path=events, events_flush_interval_ms=20) as client:
        body = UnfinishedBody(png_bytes()[:20])
        slow = asyncio.create_task(client.post("/v1/classify", content=body,
                                               headers={"Content-Type": "image/png", "X-Request-ID": "slow"}))
        await eventually(lambda: body.pulled == 2, "the slow body to stall")
        health = await client.get("/healthz")
        other = await client.post("/v1/classify", content=png_bytes())
        timed_out = await asyncio.wait_for(slow, 20)
        metrics = (await client.get("/metrics")).text
        in_use = client.app_state.admission.requests.in_use
    assert health.status_code == 200 and other.status_code == 200
    assert timed_out.status_code == 408, timed_out.text
    assert timed_out.json()["error"]["code"] == "request_timeout"
    assert timed_out.headers["connection"] == "close"
    assert in_use == 0
    assert "batchserve_admission_body_timeouts_total 1.0" in metrics
    assert ("slow", 408, "request_timeout") in event_rows(events)


def test_refusals_are_paced_only_past_their_share_of_the_answers() -> None:
    now = [100.0]
    pacer = RefusalPacer(ratio=4, floor_per_s=10, max_wait_s=5, clock=lambda: now[0])
    assert [pacer.delay() for _ in range(int(10 * BURST_S))] == [0.0] * 10  # a second's worth at once
    assert pacer.delay() == pytest.approx(0.1)  # then one every 1/10 s
    assert pacer.delay() == pytest.approx(0.2)
    now[0] = 100.5
    for _ in range(100):
        pacer.completed_one()
    now[0] = 101.0
    assert pacer.delay() == 0.0  # 100 answers in that second: the pace is now 4 x 100 a second
    assert pacer.rate_per_s == pytest.approx(400)
    for _ in range(10_000):  # a storm: waits grow up to the cap and no further
        wait = pacer.delay()
    assert wait == 5.0
    assert pacer.delayed_total > 9000
    now[0] = 131.0  # quiet again: the bucket is full, the pace keeps the recent peak, decaying
    assert pacer.delay() == 0.0
    assert 10 < pacer.rate_per_s < 400


# ---- a real server: what uvicorn does with the connection ---------------------------------------

@pytest.fixture
def blocked_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose simulated device runs one request for a minute and queues one more."""
    server = ServerProcess("--simulate-model", "60000+0", "--max-batch-size", "1", "--max-inflight-batches", "1",
                           "--max-queue-size", "1", "--no-events", "--shutdown-grace", "2", "--drain-delay", "0",
                           "--body-read-timeout-s", "1", cwd=tmp_path)
    with server:
        yield server


def raw_request(path: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n{extra}\r\n"
            ).encode()


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-answer"
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def fill_queue(server: ServerProcess) -> list[socket.socket]:
    """One request running, one queued; their sockets stay open (their answers never come)."""
    import time

    from batchserve.client.http import request_json

    held = []
    for expected_depth in (0, 1):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        body = png_bytes()
        sock.sendall(raw_request("/v1/classify?model=simulated", len(body)) + body)
        held.append(sock)
        deadline = time.monotonic() + 20
        while True:
            stats = request_json(f"{server.url}/v1/models/simulated", timeout=5)["versions"][-1]["stats"]
            if stats["inflight_batches"] == 1 and stats["queue_depth"] == expected_depth:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.01)
    return held


@pytest.mark.slow
def test_over_a_real_connection_a_refusal_leaves_it_usable(blocked_server: ServerProcess) -> None:
    held = fill_queue(blocked_server)
    try:
        body = bytes(300_000)  # never read: what it holds does not matter
        with socket.create_connection(("127.0.0.1", blocked_server.port), timeout=30) as sock:
            sock.sendall(raw_request("/v1/classify", len(body)) + body[:100])  # most of the body unsent
            status, headers, answer = read_answer(sock)
            assert status == 503 and json.loads(answer)["error"]["code"] == "overloaded"
            assert int(headers["retry-after"]) >= 1 and headers.get("connection") != "close"
            # The rest of the body, then another request on the same connection: the server skips
            # what it never read and answers the next request.
            sock.sendall(body[100:] + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, answer = read_answer(sock)
            assert status == 200 and json.loads(answer)["status"] == "ok"

        with socket.create_connection(("127.0.0.1", blocked_server.port), timeout=30) as sock:
            sock.sendall(raw_request("/v1/classify", len(body), "Expect: 100-continue\r\n"))
            status, headers, _ = read_answer(sock)
            # Never told to continue, the client will not send its body: the connection cannot be reused.
            assert status == 503 and headers["connection"] == "close"
            assert sock.recv(1) == b""
    finally:
        for sock in held:
            sock.close()


@pytest.mark.slow
def test_over_a_real_connection_a_stalled_body_gets_408_and_is_closed(blocked_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", blocked_server.port), timeout=30) as sock:
        sock.sendall(raw_request("/v1/classify", 10_000) + b"\x89PNG")
        with socket.create_connection(("127.0.0.1", blocked_server.port), timeout=30) as other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_answer(other)[0] == 200
        status, headers, answer = read_answer(sock)
        assert status == 408 and json.loads(answer)["error"]["code"] == "request_timeout"
        assert headers["connection"] == "close"
        assert sock.recv(1) == b""


@pytest.mark.slow
def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    events = tmp_path / "events.sqlite3"
    server = ServerProcess("--simulate-model", "5+0", "--max-body-bytes", "1000", "--events-path", str(events),
                           "--events-flush-interval-ms", "20", "--shutdown-grace", "2", "--drain-delay", "0",
                           cwd=tmp_path)
    with server, socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        body = bytes(5_000_000)  # far more than the socket buffers hold: a server reading it all would stall us
        sock.sendall(raw_request("/v1/classify?model=simulated", len(body), "X-Request-ID: big-1\r\n") + body[:100])
        status, headers, answer = read_answer(sock)
        assert status == 413, answer
        assert json.loads(answer)["error"]["code"] == "payload_too_large"
        assert "5000000" in json.loads(answer)["error"]["message"] and headers.get("connection") != "close"
        # The connection stays usable: the server skips the unread rest of the body.
        sock.sendall(body[100:] + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, answer = read_answer(sock)
        assert status == 200 and json.loads(answer)["status"] == "ok"
    assert ("big-1", 413, "payload_too_large") in event_rows(events)


@pytest.mark.slow
def test_connections_past_max_connections_are_refused_before_the_app(tmp_path: Path) -> None:
    """`--max-connections` bounds idle and slow connections too: past it uvicorn answers a bare 503
    itself, and once connections close the server answers again."""
    limit = 3
    server = ServerProcess("--simulate-model", "5+0", "--no-events", "--max-connections", str(limit),
                           "--shutdown-grace", "2", "--drain-delay", "0", cwd=tmp_path)
    health = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    with server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(limit)]
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(health)
                status, _, answer = read_answer(sock)
            assert status == 503 and b"status" not in answer  # uvicorn's own answer: the app never ran
        finally:
            for sock in idle:
                sock.close()

        def served() -> bool:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(health)
                return read_answer(sock)[0] == 200

        # The server notices the closed connections on its own schedule; each try is a fresh connection.
        assert any(served() for _ in range(200))
