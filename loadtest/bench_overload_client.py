"""The overload bench's HTTP client: closed loop (N connections, each sending as soon as its last
answer came back) or open loop (requests sent on a fixed schedule, whatever the server does).

Run in its own process (`python -m batchserve.loadtest.bench_overload_client ...`); prints one JSON
line. Plain asyncio protocols and a minimal HTTP/1.1 response reader instead of aiohttp or
streams: an open loop at several hundred requests per second shares two cores with the server,
and every microsecond the client spends is taken from the server it measures (about 40 µs of
CPU per request here, against 140 µs with asyncio streams and a task per request).

Open-loop latency runs from the time a request was due, not from when it could be sent, so a
client that falls behind its schedule still charges the wait to the server (no coordinated
omission). A request that finds every connection busy and `max_connections` open is counted as
`unsent` rather than queued in the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from batchserve.batching.stats import nearest_rank

MARKER = "OVERLOAD_JSON "
REQUEST_TIMEOUT_S = 30.0
# How long answers to requests sent in the window may still come back (they are checked for
# 5xx, but a 200 arriving after the window does not count towards goodput).
DRAIN_S = 30.0
_CODE = re.compile(rb'"code"\s*:\s*"([a-z_]+)"')
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[^\r\n]*close", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)


@dataclass
class Tally:
    window_end: float
    statuses: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    ok_in_window: int = 0
    ok_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    late_ms: list[float] = field(default_factory=list)
    """How late each request left the client (open loop): the client's own share of the latencies."""
    sent: int = 0
    unsent: int = 0
    connections_opened: int = 0

    def answer(self, status: int, body: bytes, due: float, now: float) -> None:
        self.statuses[str(status)] += 1
        latency_ms = (now - due) * 1000.0
        if status == 200:
            self.ok_ms.append(latency_ms)
            if now <= self.window_end:
                self.ok_in_window += 1
        else:
            if status == 503:
                self.refused_ms.append(latency_ms)
            match = _CODE.search(body)
            self.codes[f"{status} {match[1].decode() if match else '-'}"] += 1


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.due = 0.0
        self.sent_at = 0.0
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None
        self.due, self.sent_at, self.busy = due, time.perf_counter(), True
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[: end + 2])
        length = _LENGTH.search(head)
        if length is None or _CHUNKED.search(head):
            self._fail("unsupported answer framing")
            return
        total = end + 4 + int(length[1])
        if len(buffer) < total:
            return
        try:
            status = int(head[9:12])
        except ValueError:
            self._fail("not an HTTP status line")
            return
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        self.busy = False
        keep = head.startswith(b"HTTP/1.1") and _CLOSE.search(head) is None
        self.client.answered(self, status, body, keep)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy:
            self.busy = False
            self.client.failed(self, "closed")

    def _fail(self, what: str) -> None:
        self.busy = False
        self.close()
        self.client.failed(self, what)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()


class Client:
    def __init__(self, url: str, body: bytes, content_type: str, tally: Tally, max_connections: int) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.request = (
            f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        self.tally = tally
        self.max_connections = max_connections
        self.idle: deque[Connection] = deque()
        self.open: set[Connection] = set()
        self.on_idle: Callable[[Connection | None], None] | None = None  # closed loop: send again at once
        self.in_flight = 0
        self.connecting = 0

    def can_send(self) -> bool:
        return bool(self.idle) or len(self.open) + self.connecting < self.max_connections

    def send(self, due: float) -> None:
        """One request, on an idle connection or a new one, timed from `due`."""
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed:
                self.send_on(connection, due)
                return
            self.open.discard(connection)
        self.connecting += 1
        self.in_flight += 1
        asyncio.get_running_loop().create_task(self._connect_and_send(due))

    def send_on(self, connection: Connection, due: float) -> None:
        tally = self.tally
        tally.sent += 1
        tally.late_ms.append((time.perf_counter() - due) * 1000.0)
        self.in_flight += 1
        connection.send(self.request, due)

    async def _connect_and_send(self, due: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError:
            self.tally.errors["connect"] += 1
            return
        finally:
            self.connecting -= 1
            self.in_flight -= 1
        self.tally.connections_opened += 1
        self.open.add(connection)
        self.send_on(connection, due)

    def answered(self, connection: Connection, status: int, body: bytes, keep: bool) -> None:
        self.in_flight -= 1
        self.tally.answer(status, body, connection.due, time.perf_counter())
        reusable = connection if keep else None
        if reusable is None:
            self._drop(connection)
        if self.on_idle is not None:
            self.on_idle(reusable)
        elif reusable is not None:
            self.idle.append(reusable)

    def failed(self, connection: Connection, what: str) -> None:
        self.in_flight -= 1
        self.tally.errors[what] += 1
        self._drop(connection)
        if self.on_idle is not None:
            self.on_idle(None)

    def expire(self, now: float) -> None:
        """Requests unanswered for REQUEST_TIMEOUT_S count as timeouts; their connections close."""
        for connection in list(self.open):
            if connection.busy and now - connection.sent_at > REQUEST_TIMEOUT_S:
                connection.busy = False
                self.in_flight -= 1
                self.tally.errors["timeout"] += 1
                self._drop(connection)

    def _drop(self, connection: Connection) -> None:
        connection.close()
        self.open.discard(connection)

    def close_all(self) -> None:
        for connection in list(self.open):
            self._drop(connection)


async def _wait_answers(client: Client, until: float) -> None:
    while client.in_flight > 0 and time.perf_counter() < until:
        await asyncio.sleep(0.05)
        client.expire(time.perf_counter())


async def open_loop(client: Client, rate: float, duration: float) -> float:
    """Requests due every 1/rate seconds for `duration`; returns the window's real length."""
    start = time.perf_counter()
    total = int(rate * duration)
    next_check = start + 1.0
    for i in range(total):
        due = start + i / rate
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        if now > next_check:
            client.expire(now)
            next_check = now + 1.0
        if not client.can_send():
            client.tally.unsent += 1
            continue
        client.send(due)
    window = max(time.perf_counter() - start, duration)
    await _wait_answers(client, time.perf_counter() + DRAIN_S)
    return window


async def closed_loop(client: Client, concurrency: int, duration: float) -> float:
    start = time.perf_counter()
    end = start + duration

    def again(connection: Connection | None) -> None:
        now = time.perf_counter()
        if now >= end:
            if connection is not None:
                client.idle.append(connection)
            return
        if connection is not None and not connection.closed:
            client.send_on(connection, now)
        else:
            client.send(now)

    client.on_idle = again
    for _ in range(concurrency):
        client.send(start)
    while time.perf_counter() < end:
        await asyncio.sleep(0.05)
        client.expire(time.perf_counter())
    window = time.perf_counter() - start
    await _wait_answers(client, time.perf_counter() + REQUEST_TIMEOUT_S)
    return window


def _summary(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    return {"p50": nearest_rank(ordered, 0.5), "p90": nearest_rank(ordered, 0.9), "p99": nearest_rank(ordered, 0.99),
            "max": ordered[-1]}


def _cpu_seconds() -> float:
    """CPU time this client used: on a machine it shares with the server, what it took from it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace, body: bytes) -> dict[str, object]:
    cpu_at_start = _cpu_seconds()
    start = time.perf_counter()
    tally = Tally(window_end=start + args.duration)
    client = Client(args.url, body, args.content_type, tally, args.max_connections)
    if args.mode == "open":
        window = await open_loop(client, args.rate, args.duration)
    else:
        window = await closed_loop(client, args.concurrency, args.duration)
    client.close_all()
    return {
        "mode": args.mode,
        "rate": args.rate if args.mode == "open" else None,
        "concurrency": args.concurrency if args.mode == "closed" else None,
        "window_s": window,
        "sent": tally.sent,
        "unsent": tally.unsent,
        "connections_opened": tally.connections_opened,
        "statuses": dict(tally.statuses),
        "codes": dict(tally.codes),
        "errors": dict(tally.errors),
        "ok_in_window": tally.ok_in_window,
        "ok_ms": _summary(tally.ok_ms),
        "refused_ms": _summary(tally.refused_ms),
        "late_ms": _summary(tally.late_ms),
        "cpu_s": _cpu_seconds() - cpu_at_start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="open- or closed-loop POST load; prints one JSON line")
    parser.add_argument("--url", required=True, help="full URL to POST to")
    parser.add_argument("--body", required=True, help="file sent as the request body")
    parser.add_argument("--content-type", default="image/jpeg")
    parser.add_argument("--mode", choices=("open", "closed"), required=True)
    parser.add_argument("--rate", type=float, default=100.0, help="open loop: requests per second")
    parser.add_argument("--concurrency", type=int, default=64, help="closed loop: connections")
    parser.add_argument("--max-connections", type=int, default=4000, help="open loop: connections at most")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sending")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.concurrency < 1 or args.duration <= 0 or args.max_connections < 1:
        parser.error("--rate, --concurrency, --max-connections and --duration must be positive")
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # the standard loop measures the same, a little more slowly
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(run(args, Path(args.body).read_bytes()))
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
