"""A web tier process in front of a scripted upstream (tests/remote/scripted_upstream.py, a real
server on a socket): idle, it sends nothing; the upstream's cache and fallback markers reach the
answers and the events; broken answers become 502s, not tracebacks or swollen memory."""

from __future__ import annotations

import hashlib
import io
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from batchserve.loadtest.server_process import ServerProcess
from tests.remote.scripted_upstream import ScriptedUpstream

pytestmark = pytest.mark.slow
INTERVAL_S = 0.1


@dataclass
class Scripted:
    upstream: ScriptedUpstream
    web: ServerProcess
    events: Path


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    cwd = tmp_path_factory.mktemp("scripted")
    with ScriptedUpstream.in_thread() as upstream:
        web = ServerProcess("--backend", "remote", "--upstream", upstream.url,
                            "--upstream-check-interval-s", str(INTERVAL_S), "--events-flush-interval-ms", "50",
                            "--events-path", str(cwd / "events.sqlite3"), "--journal-dir", str(cwd / "journal"),
                            cwd=cwd)
        web.start()
        try:
            yield Scripted(upstream, web, cwd / "events.sqlite3")
        finally:
            web.stop(timeout=10)


def classify(web: ServerProcess, model: str, image: bytes, request_id: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "image/jpeg", "X-Request-ID": request_id or uuid.uuid4().hex}
    return httpx.post(f"{web.url}/v1/classify", params={"model": model}, content=image, headers=headers, timeout=30)


def _wait_for(condition: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_an_idle_web_tier_sends_its_upstream_nothing(scripted: Scripted, chelsea: bytes) -> None:
    upstream = scripted.upstream
    checks = upstream.requests["/readyz"]
    assert classify(scripted.web, "plain", chelsea).status_code == 200
    # While requests flow the upstream is checked: the round after this request asks its /readyz.
    assert _wait_for(lambda: upstream.requests["/readyz"] > checks)
    seen = sum(upstream.requests.values())
    time.sleep(10 * INTERVAL_S)  # ten check intervals with no request
    assert sum(upstream.requests.values()) == seen, upstream.requests


def _rows(db: Path, request_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute(
            "SELECT f.model_name, f.model_version, f.status, f.batch_size, f.cache_hit, f.fallback_for, "
            "i.sha256, i.width, i.height, i.filename FROM api_event_fact f LEFT JOIN image_dim i USING (image_key) "
            "WHERE f.request_id = ? ORDER BY f.fact_key", (request_id,)).fetchall()
    return [dict(row) for row in rows]


def _recorded(scripted: Scripted, request_id: str, count: int) -> list[dict[str, Any]]:
    assert _wait_for(lambda: scripted.events.exists() and len(_rows(scripted.events, request_id)) >= count)
    return _rows(scripted.events, request_id)


def test_a_cache_hit_upstream_is_one_here(scripted: Scripted, chelsea: bytes) -> None:
    request_id = uuid.uuid4().hex
    answer = classify(scripted.web, "cached", chelsea, request_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["cache"] == "hit" and body["model"] == "cached" and body["batch_size"] == 0
    assert "fallback" not in body
    (row,) = _recorded(scripted, request_id, 1)
    width, height = Image.open(io.BytesIO(chelsea)).size
    assert row["cache_hit"] == 1 and row["batch_size"] is None and row["fallback_for"] is None
    assert (row["sha256"], row["width"], row["height"]) == (hashlib.sha256(chelsea).hexdigest(), width, height)


def test_a_fallback_upstream_names_the_model_that_answered(scripted: Scripted, chelsea: bytes) -> None:
    request_id = uuid.uuid4().hex
    answer = classify(scripted.web, "fallback", chelsea, request_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model"], body["model_version"], body["fallback"], body["fallback_for"]) == \
        ("backup", 1, True, "fallback")
    assert "cache" not in body
    (row,) = _recorded(scripted, request_id, 1)
    assert (row["model_name"], row["model_version"], row["fallback_for"], row["cache_hit"]) == \
        ("backup", 1, "fallback", 0)


def test_multipart_answers_keep_each_files_markers(scripted: Scripted, chelsea: bytes) -> None:
    request_id = uuid.uuid4().hex
    files = [("image", (f"{name}.jpg", chelsea, "image/jpeg")) for name in ("a", "b", "c")]
    answer = httpx.post(f"{scripted.web.url}/v1/classify", params={"model": "mixed"}, files=files,
                        headers={"X-Request-ID": request_id}, timeout=30)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [(r["filename"], r["model"], r.get("cache"), r.get("fallback_for")) for r in results] == [
        ("a.jpg", "mixed", "hit", None), ("b.jpg", "backup", None, "mixed"), ("c.jpg", "mixed", "hit", None)]
    rows = _recorded(scripted, request_id, 3)
    assert sorted((r["filename"], r["model_name"], r["cache_hit"], r["fallback_for"]) for r in rows) == [
        ("a.jpg", "mixed", 1, None), ("b.jpg", "backup", 0, "mixed"), ("c.jpg", "mixed", 1, None)]


@pytest.mark.parametrize(("model", "says"), [
    ("malformed", "its answer is not valid HTTP/1.1"),
    ("huge", "body of 33554432 bytes is over the 16 MiB this server takes"),
    ("endless", "body runs past the 16 MiB this server takes"),
    ("hugehead", "headers run past 64 KiB"),
])
def test_a_broken_answer_is_a_502(scripted: Scripted, chelsea: bytes, model: str, says: str) -> None:
    answer = classify(scripted.web, model, chelsea)
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_answer" and scripted.upstream.url in error["message"]
    assert says in error["message"]
    assert classify(scripted.web, "plain", chelsea).status_code == 200  # still in rotation: it answers


def test_connections_lost_on_requests_take_it_out_until_a_check_passes(scripted: Scripted, chelsea: bytes) -> None:
    """Each try loses its connection mid-answer: three in a row open the circuit, and the client
    hears 503 upstream_unavailable; the next check's /readyz passes and requests flow again."""
    answer = classify(scripted.web, "partial", chelsea)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "upstream_unavailable"
    assert scripted.upstream.requests["/v1/classify"] > 0
    assert _wait_for(lambda: classify(scripted.web, "plain", chelsea).status_code == 200)
