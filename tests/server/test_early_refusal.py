"""Overload refusals answered by the HTTP protocol (`--early-refusal`, the default) are the app's
own refusals: two servers, one with it and one without (`--no-early-refusal`), blocked the same
way, get the same requests over real sockets, and give the same answers byte for byte (but the
date), the same events and the same metrics; only the count of refusals answered early differs,
and shows which way each went."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchserve.loadtest.server_process import ServerProcess
from tests.server.conftest import png_bytes
from tests.server.test_admission import fill_queue

pytestmark = pytest.mark.slow

EARLY = "batchserve_admission_refusals_answered_early_total"
_SAMPLE = re.compile(r"^(batchserve_(?:http|admission)_[a-z_]*(?:_total|_count)(?:\{[^}]*\})?) ([0-9.e+]+)$")
PNG = png_bytes()
V2_BODY = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}]}).encode()


def request(path: str, body: bytes, *headers: str, content_type: str = "image/png", version: str = "1.1") -> bytes:
    head = [f"POST {path} HTTP/{version}", "Host: t", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
            "User-Agent: twin/1.0", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def multipart(body: bytes) -> tuple[bytes, str]:
    boundary = "twinboundary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    return part, f"multipart/form-data; boundary={boundary}"


MULTIPART, MULTIPART_TYPE = multipart(PNG)
# (what is sent on one connection, how many answers come back, whether the early path may answer)
CASES: list[tuple[str, bytes, int, bool]] = [
    ("queue full", request("/v1/classify?model=simulated", PNG, "X-Request-ID: twin-queue"), 1, True),
    ("default model", request("/v1/classify", PNG, "X-Request-ID: twin-default"), 1, True),
    ("bound full (an unknown model is the route's to answer)",
     request("/v1/classify?model=nosuch", PNG, "X-Request-ID: twin-bound"), 1, True),
    ("v2 infer", request("/v2/models/simulated/infer", V2_BODY, "X-Request-ID: twin-v2",
                         content_type="application/json"), 1, True),
    ("v2 infer, version", request("/v2/models/simulated/versions/1/infer", V2_BODY, "X-Request-ID: twin-v2v",
                                  content_type="application/json"), 1, True),
    ("multipart", request("/v1/classify?model=simulated", MULTIPART, "X-Request-ID: twin-multi",
                          content_type=MULTIPART_TYPE), 1, True),
    ("behind a proxy", request("/v1/classify?model=simulated", PNG, "X-Request-ID: twin-proxy",
                               "X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https"), 1, True),
    ("connection close", request("/v1/classify?model=simulated", PNG, "X-Request-ID: twin-close",
                                 "Connection: close"), 1, True),
    ("HTTP/1.0", request("/v1/classify?model=simulated", PNG, "X-Request-ID: twin-10", version="1.0"), 1, True),
    ("pipelined", request("/v1/classify?model=simulated", PNG, "X-Request-ID: twin-pipe-1")
     + request("/v2/models/simulated/infer", V2_BODY, "X-Request-ID: twin-pipe-2", content_type="application/json"),
     2, True),
    ("an unsafe request id is replaced", request("/v1/classify?model=simulated", PNG, "X-Request-ID: bad id!"),
     1, True),
    ("a key goes to the app", request("/v1/classify?model=simulated", PNG, "X-Request-ID: twin-key",
                                      "X-API-Key: not-a-known-key"), 1, False),
    ("a bearer token goes to the app", request("/v1/classify?model=simulated", PNG, "X-Request-ID: twin-bearer",
                                               "Authorization: Bearer not-known"), 1, False),
    ("Expect: 100-continue goes to the app", request("/v1/classify?model=simulated", PNG, "X-Request-ID: twin-expect",
                                                     "Expect: 100-continue")[:-len(PNG)], 1, False),
    ("a body over the limit goes to the app (413)",
     request("/v1/classify?model=simulated", b"", "X-Request-ID: twin-big").replace(b"Content-Length: 0",
                                                                                     b"Content-Length: 99999999"),
     1, False),
]


def answers(port: int, data: bytes, count: int) -> list[tuple[str, list[tuple[str, str]], bytes]]:
    """`count` answers to `data` sent on one connection, in order: status line, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        buffered = b""
        out = []
        for _ in range(count):
            while b"\r\n\r\n" not in buffered:
                chunk = sock.recv(65536)
                assert chunk, f"closed before an answer: {buffered!r}"
                buffered += chunk
            head, _, buffered = buffered.partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = [(name.lower(), value.strip()) for name, value in (line.split(":", 1) for line in lines)]
            length = int(dict(headers)["content-length"])
            while len(buffered) < length:
                chunk = sock.recv(65536)
                assert chunk, "closed mid-answer"
                buffered += chunk
            out.append((status_line, headers, buffered[:length]))
            buffered = buffered[length:]
    return out


def comparable(answer: tuple[str, list[tuple[str, str]], bytes]) -> tuple[str, list[tuple[str, str]], bytes]:
    status_line, headers, body = answer
    kept = []
    for name, value in headers:
        if name == "date":
            continue
        if name == "x-request-id" and not value.startswith("twin-"):
            assert re.fullmatch(r"[0-9a-f]{32}", value), value  # a fresh id
            value = "(fresh)"
        kept.append((name, value))
    return status_line, kept, body


def metrics_text(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as answer:
        return answer.read().decode()


def counters(server: ServerProcess) -> dict[str, float]:
    text = metrics_text(server)
    return {m[1]: float(m[2]) for m in map(_SAMPLE.match, text.splitlines()) if m}


def events(path: Path, expected: int) -> list[tuple[object, ...]]:
    deadline = time.monotonic() + 20
    while True:
        with sqlite3.connect(path) as db:
            rows = db.execute(
                "SELECT f.request_id, f.status, f.error_code, f.route, f.model_name, u.user_name, u.client_ip, "
                "u.user_agent FROM api_event_fact f JOIN user_dim u USING (user_key) "
                "WHERE u.user_agent = 'twin/1.0' ORDER BY f.request_id").fetchall()
        if len(rows) >= expected or time.monotonic() > deadline:
            return [tuple("(fresh)" if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{32}", v) else v for v in row)
                    for row in rows]
        time.sleep(0.02)


@pytest.fixture
def twins(tmp_path: Path) -> Iterator[dict[str, tuple[ServerProcess, Path]]]:
    servers = {}
    common = ("--models", "tiny", "--simulate-model", "60000+0", "--max-batch-size", "1", "--max-inflight-batches", "1",
              "--max-queue-size", "1", "--max-concurrent-requests", "2", "--events-flush-interval-ms", "20",
              "--shutdown-grace", "2", "--drain-delay", "0", "--max-body-bytes", "1000000")
    for name, flag in (("early", "--early-refusal"), ("app", "--no-early-refusal")):
        cwd = tmp_path / name
        cwd.mkdir()
        events_path = cwd / "events.sqlite3"
        servers[name] = (ServerProcess(*common, "--events-path", str(events_path), flag, cwd=cwd), events_path)
    for server, _ in servers.values():
        server.start()
    try:
        yield servers
    finally:
        for server, _ in servers.values():
            server.stop()


def test_early_refusals_are_the_apps_refusals(twins: dict[str, tuple[ServerProcess, Path]]) -> None:
    seen: dict[str, list[object]] = {}
    for name, (server, events_path) in twins.items():
        held = fill_queue(server)  # one request running, one queued: the queue and the bound are full
        try:
            before = counters(server)
            got = [comparable(a) for _, data, count, _ in CASES for a in answers(server.port, data, count)]
            after = counters(server)
        finally:
            for sock in held:
                sock.close()
        delta = {k: after[k] - before.get(k, 0.0) for k in after if after[k] != before.get(k, 0.0)}
        seen[name] = [got, delta, events(events_path, len(got))]

    early_answers, early_delta, early_events = seen["early"]
    app_answers, app_delta, app_events = seen["app"]
    assert early_answers == app_answers
    statuses = [a[0] for a in early_answers]  # type: ignore[index]
    assert statuses.count("HTTP/1.1 503 Service Unavailable") == len(statuses) - 1
    assert "HTTP/1.1 413 Request Entity Too Large" in statuses or "HTTP/1.1 413 Content Too Large" in statuses
    # Which way they went: every case the early path may answer, and nothing else.
    may = sum(count for _, _, count, early in CASES if early)
    assert early_delta.pop(EARLY) == may
    assert EARLY not in app_delta
    assert early_delta == app_delta
    assert early_events == app_events
    assert len(early_events) == len(early_answers)
    by_id = {row[0]: row for row in early_events}
    assert by_id["twin-proxy"][6] == "203.0.113.0"  # the forwarded client, its address truncated as events keep it
    assert by_id["twin-queue"][2] == "overloaded" and by_id["twin-bound"][2] == "overloaded"
    assert by_id["twin-v2"][3] == "v2"


def test_the_early_path_takes_no_slot_and_leaves_the_connection_usable(
        twins: dict[str, tuple[ServerProcess, Path]]) -> None:
    server, _ = twins["early"]
    held = fill_queue(server)
    try:
        body = bytes(300_000)
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            # Refused on its headers: most of the body is still to come.
            sock.sendall(request("/v1/classify?model=simulated", body, "X-Request-ID: twin-early")[:-299_000])
            data = b""
            while b"}}" not in data:
                data += sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 503 ")
            sock.sendall(body[1000:] + b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while b'"ok"' not in data:
                chunk = sock.recv(65536)
                assert chunk
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 ")
        assert counters(server)[EARLY] >= 1
        # The refusals took no place: the two held requests hold the only ones.
        assert "\nbatchserve_admission_inflight_requests 2.0\n" in metrics_text(server)
    finally:
        for sock in held:
            sock.close()
