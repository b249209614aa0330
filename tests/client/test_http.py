"""The command-line tools' HTTP client: JSON both ways, the server's two error shapes, no proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from batchserve.client.http import HttpError, NotJson, Unreachable, request_json
from batchserve.loadtest.server_process import free_port


class Canned:
    """A server that answers every request with one status and body, and records what it got."""

    def __init__(self, status: int = 200, body: bytes = b"{}") -> None:
        self.status, self.body = status, body
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.seen.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Canned:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def canned() -> Iterator[Canned]:
    with Canned() as server:
        yield server


def test_json_goes_out_and_comes_back(canned: Canned) -> None:
    canned.body = b'{"state": "ready", "versions": ["1"]}'
    answer = request_json(canned.url + "/x?y=1", method="POST", body={"a": [1]}, headers={"X-Admin-Key": "k"})
    assert answer == {"state": "ready", "versions": ["1"]}
    ((method, path, headers, body),) = canned.seen
    assert (method, path, json.loads(body)) == ("POST", "/x?y=1", {"a": [1]})
    assert headers["Content-Type"] == "application/json" and headers["X-Admin-Key"] == "k"
    assert headers["Accept"] == "application/json"


def test_an_empty_answer_is_none(canned: Canned) -> None:
    canned.body = b""
    assert request_json(canned.url) is None
    assert canned.seen[0][0] == "GET" and "Content-Type" not in canned.seen[0][2]


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (404, b'{"error": {"code": "model_not_found", "message": "model \'x\' is not loaded"}}',
         "model_not_found", "model 'x' is not loaded"),
        (422, b'{"error": {"code": "invalid_parameter"}}', "invalid_parameter", "invalid_parameter"),
        (400, b'{"error": "unexpected inference input \'pixels\'"}', None, "unexpected inference input 'pixels'"),
        (502, b"<html>Bad Gateway</html>", None, "<html>Bad Gateway</html>"),
        (500, b'{"detail": "boom"}', None, '{"detail": "boom"}'),
        (503, b"", None, "(empty body)"),
    ],
    ids=["v1", "v1-code-only", "v2", "not-json", "json-without-error", "empty"],
)
def test_error_answers_carry_status_code_and_message(
    canned: Canned, status: int, body: bytes, code: str | None, message: str
) -> None:
    canned.status, canned.body = status, body
    with pytest.raises(HttpError) as caught:
        request_json(canned.url)
    assert type(caught.value) is HttpError
    assert (caught.value.status, caught.value.code, caught.value.message) == (status, code, message)


def test_a_success_that_is_not_json(canned: Canned) -> None:
    canned.body = b"<html>captive portal</html>"
    with pytest.raises(NotJson) as caught:
        request_json(canned.url)
    assert caught.value.status == 200 and "captive portal" in caught.value.message


@pytest.mark.parametrize("url", [lambda: f"http://127.0.0.1:{free_port()}/", lambda: "127.0.0.1:8000/v1/stats"],
                         ids=["refused", "not-a-url"])
def test_no_answer_is_unreachable(url: Any) -> None:
    with pytest.raises(Unreachable) as caught:
        request_json(url(), timeout=5)
    assert caught.value.status is None and caught.value.message


def test_proxies_from_the_environment_are_not_used(canned: Canned) -> None:
    # A child process: urllib reads the proxy variables when the module builds its opener.
    proxy = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"} | {"http_proxy": proxy, "HTTP_PROXY": proxy}
    probe = f"from batchserve.client.http import request_json; print(request_json({canned.url!r}))"
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "{}" and len(canned.seen) == 1
