"""The bulk client's retries and credentials, against a small scripted HTTP server.

The server answers what each test scripts (503 then 200, 401, ...), which a real batchserve
cannot be made to do on cue; it stands for nothing but the wire, so what is tested is the client.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from batchserve.cli import main

RESULT = {"request_id": "r", "model": "m", "model_version": 1, "predictions": [{"class_id": 1, "label": "one",
                                                                               "score": 0.9}],
          "timing_ms": {"queue": 1.0, "inference": 2.0, "total": 3.0}, "batch_size": 1}


@dataclass
class Seen:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Scripted:
    """Answers POSTs with `script` in turn (then its last entry again); GETs (the model check) with 200."""

    script: list[tuple[int, dict[str, str], Any]]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    state = Scripted(script=[(200, {}, RESULT)])
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

        def _answer(self, status: int, headers: dict[str, str], document: Any) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(200, {}, {"models": []})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                index = len(state.seen)
                state.seen.append(Seen(time.monotonic(), self.path, dict(self.headers), body))
            self._answer(*state.script[min(index, len(state.script) - 1)])

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def photo(tmp_path: Path, chelsea: bytes) -> Path:
    path = tmp_path / "cat.jpg"
    path.write_bytes(chelsea)
    return path


def records(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_503_and_429_are_retried_after_their_retry_after(scripted: Scripted, photo: Path, chelsea: bytes,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    scripted.script = [(503, {"Retry-After": "1"}, {"error": {"code": "queue_full", "message": "full"}}),
                       (429, {"Retry-After": "1"}, {"error": {"code": "rate_limited", "message": "slow down"}}),
                       (200, {}, RESULT)]
    assert main(["classify", str(photo), "--url", scripted.url, "--model", "m", "--top-k", "1"]) == 0
    (record,) = records(capsys.readouterr().out)
    assert record["status"] == "ok" and record["attempts"] == 3 and record["predictions"] == RESULT["predictions"]
    first, second, third = scripted.seen
    assert second.at - first.at >= 1.0 and third.at - second.at >= 1.0
    assert {s.headers["X-Request-Id"] for s in scripted.seen} == {first.headers["X-Request-Id"]}
    assert all(s.body == chelsea and s.headers["Content-Type"] == "image/jpeg" for s in scripted.seen)
    assert first.path == "/v1/classify?model=m&top_k=1"


def test_retries_are_capped_and_the_last_refusal_is_the_images_error(
        scripted: Scripted, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scripted.script = [(503, {"Retry-After": "0"}, {"error": {"code": "queue_full", "message": "the queue is full"}})]
    assert main(["classify", str(photo), "--url", scripted.url, "--max-retries", "2"]) == 1
    (record,) = records(capsys.readouterr().out)
    assert len(scripted.seen) == 3
    assert record["status"] == "failed" and record["attempts"] == 3 and record["http_status"] == 503
    assert record["error"] == {"code": "queue_full", "message": "the queue is full (gave up after 3 tries)"}


def test_other_client_errors_are_final(scripted: Scripted, photo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scripted.script = [(415, {}, {"error": {"code": "unsupported_media_type", "message": "no"}})]
    assert main(["classify", str(photo), "--url", scripted.url]) == 1
    (record,) = records(capsys.readouterr().out)
    assert len(scripted.seen) == 1 and record["error"]["code"] == "unsupported_media_type"


def test_the_key_from_the_environment_is_sent_and_a_refusal_stops_the_run(
        scripted: Scripted, tmp_path: Path, chelsea: bytes, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(5):
        (tmp_path / f"{index}.jpg").write_bytes(chelsea)
    monkeypatch.setenv("BATCHSERVE_API_KEY", "bsk_from_env")
    scripted.script = [(401, {}, {"error": {"code": "unauthorized", "message": "unknown key"}})]
    assert main(["classify", str(tmp_path), "--url", scripted.url, "--concurrency", "1"]) == 1
    out, err = capsys.readouterr()
    assert len(scripted.seen) == 1 and out == ""  # nothing recorded: --resume sends them all again
    assert scripted.seen[0].headers["Authorization"] == "Bearer bsk_from_env"
    assert "refused the request (401 unauthorized): unknown key" in err

    scripted.seen.clear()
    scripted.script = [(200, {}, RESULT)]
    assert main(["classify", str(tmp_path / "0.jpg"), "--url", scripted.url, "--api-key", "bsk_flag"]) == 0
    assert scripted.seen[0].headers["Authorization"] == "Bearer bsk_flag"
