"""Bounds on a request's head over real connections to a `batchserve serve` process: a head over
`--max-header-bytes` is answered 431 and its connection closed, one not complete within
`--header-read-timeout-s` 408, without the server's memory growing with what a client sends, and
without touching keep-alive, pipelining or heads within the bounds."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from PIL import Image
from uvicorn.server import ServerState

from batchserve.loadtest.server_process import ServerProcess, free_port
from batchserve.server.http_protocol import HeadBoundedProtocol, head_bounded

pytestmark = pytest.mark.slow

HEAD_TIMEOUT_S = 1.0
LIMIT = 64 * 1024  # the default --max-header-bytes
SLOW_MS = 1500  # what one request to the simulated model takes: longer than the head timeout
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.fixture(scope="module")
def server(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cwd = tmp_path_factory.mktemp("head-bounds")
    with ServerProcess("--model-repo", str(built_models), "--models", "tiny", "--simulate-model", f"{SLOW_MS}+0",
                       "--no-events", "--header-read-timeout-s", str(HEAD_TIMEOUT_S), "--shutdown-grace", "2",
                       cwd=cwd) as process:
        yield process


def connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def read_answer(sock: socket.socket, buffered: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One answer from the connection; bytes past it stay in `buffered` for the next one."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {bytes(buffered)!r}"
        buffered += chunk
    head, _, _ = bytes(buffered).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    start = len(head) + 4
    while len(buffered) < start + length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-answer"
        buffered += chunk
    body = bytes(buffered[start:start + length])
    del buffered[:start + length]
    return int(lines[0].split()[1]), headers, body


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    return read_answer(sock, bytearray())


def assert_closed(sock: socket.socket) -> None:
    assert sock.recv(65536) == b""


def get_with_header(path: str, value_bytes: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Pad: {'a' * value_bytes}\r\n\r\n".encode()


def noise_png(side: int) -> bytes:
    """An image that compresses badly: its bytes are well over the head limit."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def classify_request(body: bytes, model: str = "tiny") -> bytes:
    return (f"POST /v1/classify?model={model} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(("path", "v2"), [("/healthz", False), ("/v2/health/ready", True)])
def test_a_head_over_the_limit_is_431_and_closed(server: ServerProcess, path: str, v2: bool) -> None:
    with connect(server) as sock:
        sock.sendall(get_with_header(path, 100 * 1024))
        status, headers, body = answer(sock)
        assert status == 431, body
        assert headers["content-type"] == "application/json" and headers["connection"] == "close"
        error = json.loads(body)["error"]
        if v2:  # the Open Inference Protocol's shape
            assert isinstance(error, str) and str(LIMIT) in error
        else:
            assert error["code"] == "headers_too_large" and str(LIMIT) in error["message"]
        assert_closed(sock)


def test_the_metrics_port_bounds_heads_as_the_api_port_does(built_models: Path, tmp_path: Path) -> None:
    metrics_port = free_port()
    with ServerProcess("--model-repo", str(built_models), "--models", "tiny", "--no-events", "--metrics-port",
                       str(metrics_port), cwd=tmp_path) as process, \
            socket.create_connection(("127.0.0.1", metrics_port), timeout=30) as sock:
        sock.sendall(get_with_header("/metrics", 100 * 1024))
        status, _, body = answer(sock)
        assert status == 431 and json.loads(body)["error"]["code"] == "headers_too_large", body
        assert_closed(sock)
        assert process.process.poll() is None  # still serving


def test_a_huge_header_is_refused_early_without_the_server_holding_it(server: ServerProcess) -> None:
    before = rss_bytes(server.process.pid)
    total = 64 * 1024 * 1024
    with connect(server) as sock:
        failed: list[BaseException] = []

        def send() -> None:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
                piece = b"a" * (1 << 20)
                for _ in range(total // len(piece)):
                    sock.sendall(piece)
            except OSError as exc:  # the server stops reading once it has answered: expected
                failed.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        status, _, body = answer(sock)
        sock.shutdown(socket.SHUT_RDWR)  # the sender, still at it, stops
        sender.join(30)
    assert status == 431 and json.loads(body)["error"]["code"] == "headers_too_large"
    # Unbounded, the parser kept the whole header and then some (about 1.7 times its size).
    assert rss_bytes(server.process.pid) - before < 16 * 1024 * 1024
    with connect(server) as sock:
        sock.sendall(HEALTH)
        assert answer(sock)[0] == 200


def test_a_head_of_exactly_the_limit_is_served_and_one_byte_more_refused(server: ServerProcess) -> None:
    at_limit = get_with_header("/healthz", LIMIT - len(get_with_header("/healthz", 0)))
    assert len(at_limit) == LIMIT
    with connect(server) as sock:
        sock.sendall(at_limit)
        status, headers, body = answer(sock)
        assert status == 200 and json.loads(body)["status"] == "ok" and headers.get("connection") != "close"
        sock.sendall(HEALTH)  # the connection stays usable
        assert answer(sock)[0] == 200
        sock.sendall(get_with_header("/healthz", LIMIT + 1 - len(get_with_header("/healthz", 0))))
        assert answer(sock)[0] == 431
        assert_closed(sock)


def test_a_large_body_arriving_with_its_head_is_not_taken_for_a_large_head(server: ServerProcess) -> None:
    image = noise_png(256)
    assert len(image) > 3 * LIMIT
    with connect(server) as sock:
        sock.sendall(classify_request(image))
        status, _, body = answer(sock)
        assert status == 200, body
        assert json.loads(body)["predictions"]


def test_two_pipelined_requests_in_one_send_are_both_answered(server: ServerProcess) -> None:
    image = noise_png(200)
    with connect(server) as sock:
        buffered = bytearray()
        sock.sendall(classify_request(image) + HEALTH + HEALTH)
        first = read_answer(sock, buffered)
        assert first[0] == 200 and json.loads(first[2])["predictions"]
        for _ in range(2):
            status, _, body = read_answer(sock, buffered)
            assert status == 200 and json.loads(body)["status"] == "ok"
        assert not buffered


def trickle_until_answered(sock: socket.socket, head: bytes, pause_s: float) -> tuple[float, bytes]:
    """Sends `head` a byte at a time, `pause_s` apart, until the server answers: (seconds from the
    first byte to the answer, what it said)."""
    started = time.monotonic()
    for byte in head:
        sock.sendall(bytes([byte]))
        readable, _, _ = select.select([sock], [], [], pause_s)
        if readable:
            return time.monotonic() - started, sock.recv(65536)
    raise AssertionError("the whole head was sent without an answer")


def test_a_trickled_head_gets_408_and_is_closed_while_others_are_served(server: ServerProcess) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    with connect(server) as slow:
        slow.sendall(head[:10])
        with connect(server) as other:  # the slow client holds nothing the others need
            other.sendall(HEALTH)
            assert answer(other)[0] == 200
        elapsed, data = trickle_until_answered(slow, head[10:], 0.05)
        buffered = bytearray(data)
        status, headers, body = read_answer(slow, buffered)
        assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
        assert headers["connection"] == "close"
        assert_closed(slow)
    assert elapsed < HEAD_TIMEOUT_S + 5  # from the connection's start, not from the last byte


def test_an_idle_keep_alive_connection_is_not_cut_by_the_head_timer(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(HEALTH)
        assert answer(sock)[0] == 200
        # Idle far past the head timeout, well within uvicorn's 30 s keep-alive: waiting is the point.
        time.sleep(HEAD_TIMEOUT_S * 3)
        sock.sendall(HEALTH)
        assert answer(sock)[0] == 200
        time.sleep(HEAD_TIMEOUT_S * 2)
        # The next head is timed from its own first byte, not from the end of the last answer.
        elapsed, data = trickle_until_answered(sock, b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X" * 500, 0.05)
        assert read_answer(sock, bytearray(data))[0] == 408
        assert elapsed >= HEAD_TIMEOUT_S * 0.9


def test_a_connection_that_sends_nothing_is_closed_unanswered(server: ServerProcess) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        assert_closed(sock)
        assert HEAD_TIMEOUT_S * 0.9 <= time.monotonic() - started < HEAD_TIMEOUT_S + 10


def test_a_head_pipelined_behind_a_slow_answer_waits_for_it(server: ServerProcess) -> None:
    """While an earlier request is being answered, a pipelined head is not timed out (the server is
    the one behind) and a refusal never lands inside the earlier answer."""
    slow = classify_request(noise_png(32), model="simulated")
    with connect(server) as sock:
        buffered = bytearray()
        sock.sendall(slow + b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # the second head is incomplete
        status, _, body = read_answer(sock, buffered)
        assert status == 200 and json.loads(body)["predictions"]  # after SLOW_MS, past the head timeout
        status, _, body = read_answer(sock, buffered)
        assert status == 408 and json.loads(body)["error"]["code"] == "request_timeout"
        assert_closed(sock)

    with connect(server) as sock:
        buffered = bytearray()
        sock.sendall(slow + get_with_header("/healthz", 100 * 1024))
        status, _, body = read_answer(sock, buffered)
        assert status == 200 and json.loads(body)["predictions"]
        # The earlier answer is whole; the connection then closes, the oversized request unanswered.
        assert not buffered
        assert_closed(sock)


@pytest.mark.parametrize(("args", "message"), [
    (["--max-header-bytes", "1000"], "max_header_bytes must be in 1024..1048576"),
    (["--max-header-bytes", "2000000"], "max_header_bytes must be in 1024..1048576"),
    (["--header-read-timeout-s", "0"], "header_read_timeout_s must be in (0, 300]"),
    (["--header-read-timeout-s", "301"], "header_read_timeout_s must be in (0, 300]"),
])
def test_out_of_range_bounds_refuse_to_start(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PORT"}
    result = subprocess.run([sys.executable, "-m", "batchserve", "serve", "--port", str(free_port()), *args],
                            capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_an_out_of_range_environment_value_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PORT"} | {"BATCHSERVE_HEADER_READ_TIMEOUT_S": "nan"}
    result = subprocess.run([sys.executable, "-m", "batchserve", "serve", "--port", str(free_port())],
                            capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "header_read_timeout_s" in result.stderr, result.stderr


# ---- in process: the timers end with their connections -----------------------------------------

async def health_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def eventually(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Wait for a state of the server; the timeout only bounds a broken run."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.005)


async def test_no_head_timer_outlives_its_connection() -> None:
    loop = asyncio.get_running_loop()
    config = uvicorn.Config(health_app, lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    protocol = head_bounded(1024, 60.0)
    server = await loop.create_server(lambda: protocol(config=config, server_state=state, app_state={}, _loop=loop),
                                      "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def connection(sent: bytes, *, answered: bool) -> tuple[HeadBoundedProtocol, asyncio.TimerHandle | None]:
        """A connection that sends `sent` (and reads the answer when there is one), then closes;
        its protocol and the timer it held just before closing."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        if answered:
            await reader.readuntil(b"\r\n\r\n")
        await eventually(lambda: len(state.connections) == 1, "the connection to be taken")
        (opened,) = state.connections
        assert isinstance(opened, HeadBoundedProtocol)
        await eventually(lambda: opened._head_done_in_chunk or opened._head_open or opened._discarding,
                         "what was sent to be read")
        timer = opened._head_timer
        writer.close()
        await eventually(lambda: not state.connections, "the connection to be lost")
        return opened, timer

    try:
        # A head cut short, an oversized one (its answer is followed by a lingering close), and a
        # complete request (whose head timer is gone already).
        for sent, answered, timer_held in ((b"GET /healthz HTTP/1.1\r\nHo", False, True),
                                           (b"GET / HTTP/1.1\r\nX: " + b"a" * 2000 + b"\r\n\r\n", True, True),
                                           (b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", True, False)):
            lost, timer = await connection(sent, answered=answered)
            assert (timer is not None) == timer_held
            assert timer is None or timer.cancelled()
            assert lost._head_timer is None
    finally:
        server.close()
        await server.wait_closed()


async def refusing_app(scope: Any, receive: Any, send: Any) -> None:
    """Answers before reading the body, as a refusal does."""
    await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"no"})


@contextlib.asynccontextmanager
async def refusing_server(**config: Any) -> AsyncIterator[int]:
    """A server of `refusing_app` with the head-bounded protocol, on a free port (yielded)."""
    loop = asyncio.get_running_loop()
    settings = uvicorn.Config(refusing_app, lifespan="off", log_config=None, **config)
    settings.load()
    state = ServerState()
    protocol = head_bounded(64 * 1024, 60.0)
    server = await loop.create_server(
        lambda: protocol(config=settings, server_state=state, app_state={}, _loop=loop), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_connection_answered_before_its_body_ended_still_times_out_when_idle() -> None:
    """uvicorn arms the keep-alive timer when the answer goes out and disarms it when more of the
    request arrives: a client that finishes its body after a refusal and then sends nothing
    would hold the connection forever. The timer is armed again once the request ends."""
    async with refusing_server(timeout_keep_alive=1) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12345")
        assert (await reader.readuntil(b"no")).startswith(b"HTTP/1.1 503 ")
        writer.write(b"67890")  # the rest of the refused body; then nothing more
        await writer.drain()
        # The server closes the idle connection (EOF) after its keep-alive timeout; the bound only
        # keeps a broken run from hanging.
        async with asyncio.timeout(20):
            assert await reader.read() == b""
        writer.close()


async def test_an_answer_that_closes_before_the_body_ended_lets_the_client_finish_and_read_it() -> None:
    """`Connection: close` on a request answered before its body arrived (a 413 or a refusal):
    closed at once, the socket would be reset under a client still sending, and the answer lost.
    The server stops sending, reads and drops the rest, and closes once the client has."""
    body_bytes = 8 * 1024 * 1024  # far more than the sockets' buffers hold
    async with refusing_server() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {body_bytes}\r\n\r\n"
                     .encode() + bytes(1000))
        answer = await reader.readuntil(b"no")
        assert answer.startswith(b"HTTP/1.1 503 ") and b"connection: close" in answer
        for _ in range((body_bytes - 1000) // 65536):
            writer.write(bytes(65536))
            await writer.drain()  # a reset connection fails here
        writer.write_eof()
        async with asyncio.timeout(20):
            assert await reader.read() == b""  # then the server closes too
        writer.close()
