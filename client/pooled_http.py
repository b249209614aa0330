"""A lean HTTP/1.1 client for one origin (the remote web tier's upstreams, the queue worker's S3 and
SQS endpoints): a bounded pool of keep-alive connections
(http_connection.py), each request within one deadline, one retry when a pooled connection
turns out to be stale.

Why not aiohttp: on the two-core machine of docs/remote-backend.md its exchange cost the web tier
1.0-1.2 ms of CPU per forwarded image, most of the hop; this one about a third of that, most of
it the kernel's send (docs/remote-backend.md).

- **Pool**: at most `connections` open (or opening) at once; a request that finds all busy waits
  for one to come back, within its deadline. The most recently used idle connection goes first
  (it is the least likely to have been closed), and one idle for `idle_s` is closed rather than
  used: the upstream's server (uvicorn: 30 s, proxies often less) may be closing it right then.
- **Stale connections**: one the upstream closed while idle is seen closed (EOF) and never used.
  One it closes just as a request goes out ends with nothing received; that request is sent
  once more on a new connection. Nothing else is retried here: once any byte came back the
  upstream took the request up, and what to do is the caller's choice (forwarding.py).
- **Deadline**: waiting for a connection, connecting and the exchange all end at the deadline
  (TimeoutError); an exchange cut short closes its connection, whose answer nobody would read.
- **TLS** for https:// upstreams, verified against the system's CAs (OpenSSL honours
  SSL_CERT_FILE), HTTP/1.1 asked for by ALPN.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from batchserve.client.http_connection import BadAnswer, ConnectionLost, HttpAnswer, HttpConnection

__all__ = ["BadAnswer", "ClientSettings", "ConnectFailed", "ConnectionLost", "HttpAnswer", "UpstreamClient"]


@dataclass(frozen=True)
class ClientSettings:
    connections: int = 64
    connect_timeout_s: float = 1.0
    # Below uvicorn's 30 s keep-alive: this side gives up an idle connection before the upstream does.
    idle_s: float = 15.0
    max_head_bytes: int = 64 * 1024
    # The largest answer taken: 64 images x top_k 1000 with long labels stays far below it.
    max_body_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.connections < 1 or self.connect_timeout_s <= 0 or self.idle_s <= 0:
            raise ValueError("connections, connect_timeout_s and idle_s must be positive")


class ConnectFailed(Exception):
    """No connection could be made (refused, unreachable, no answer within the connect timeout,
    TLS refused): the request never left."""


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class UpstreamClient:
    def __init__(self, base_url: str, settings: ClientSettings, *, headers: Mapping[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {base_url!r}")
        self.settings = settings
        self.url = base_url
        tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if tls else 80)
        self._ssl = (ssl_context or tls_context()) if tls else None
        self._prefix = parts.path.rstrip("/")
        authority = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port is not None and parts.port != (443 if tls else 80):
            authority += f":{parts.port}"
        fixed = {"Host": authority, **(headers or {})}
        for name, value in fixed.items():
            if not all(" " <= c <= "~" for c in name + value):
                raise ValueError(f"header {name} must be printable ASCII")
        self._fixed_headers = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._idle: list[HttpConnection] = []  # the last one is the most recently used
        self._open = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[HttpConnection | None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        """Idle connections fit for a request (not one the upstream has closed meanwhile)."""
        return sum(connection.reusable for connection in self._idle)

    async def request(self, method: str, path: str, *, timeout_s: float, body: bytes = b"",
                      headers: str = "") -> HttpAnswer:
        """`path` with its query, after the base URL's own path; `headers` extra header lines, each
        "Name: value\\r\\n", printable ASCII (the caller's to make sure). Raises ConnectFailed,
        ConnectionLost, BadAnswer or TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
        head = f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._fixed_headers}{headers}{length}\r\n"
        message = head.encode("latin-1") + body
        connection, pooled = await self._acquire(loop, deadline, fresh=False)
        try:
            return await self._exchange(loop, connection, message, deadline)
        except ConnectionLost as lost:
            if not pooled or lost.received:
                raise
        # The pooled connection was closed as the request went out, before any answer: the
        # upstream never took it up, so it goes once more, on a new connection.
        connection, _ = await self._acquire(loop, deadline, fresh=True)
        return await self._exchange(loop, connection, message, deadline)

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._discard(self._idle.pop())
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    # ---- the exchange ---------------------------------------------------------------------
    async def _exchange(self, loop: asyncio.AbstractEventLoop, connection: HttpConnection, message: bytes,
                        deadline: float) -> HttpAnswer:
        try:
            answer = connection.exchange(message)
        except BaseException:
            self._discard(connection)
            raise
        timer = loop.call_at(deadline, _expire, answer)
        try:
            result = await answer
        except BaseException:  # lost, malformed, too late, or the caller went away
            connection.abort()
            self._discard(connection)
            raise
        finally:
            timer.cancel()
        self._release(loop, connection)
        return result

    # ---- the pool -------------------------------------------------------------------------
    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float, *,
                       fresh: bool) -> tuple[HttpConnection, bool]:
        """A connection for one exchange, and whether it was pooled (not new)."""
        while True:
            if self._closed:
                raise ConnectFailed("the client is closed")
            if not fresh:
                idle = self._idle
                while idle:
                    connection = idle.pop()
                    if connection.reusable and loop.time() - connection.idle_since < self.settings.idle_s:
                        return connection, True
                    self._discard(connection)
            elif self._open >= self.settings.connections and self._idle:
                self._discard(self._idle.pop(0))  # make room for the new one: the oldest idle goes
            if self._open < self.settings.connections:
                self._open += 1
                try:
                    return await self._connect(loop, deadline), False
                except BaseException:
                    self._open -= 1
                    self._wake(None)
                    raise
            handed = await self._wait(loop, deadline)
            if handed is not None:
                return handed, True

    async def _wait(self, loop: asyncio.AbstractEventLoop, deadline: float) -> HttpConnection | None:
        """Until an exchange ends: its connection when it is handed over, None when room was made."""
        waiter: asyncio.Future[HttpConnection | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()  # handed over just as this wait ended: pass it on
                if handed is not None:
                    self._release(loop, handed)
            raise
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()
            if waiter in self._waiters:  # still queued: the wait ended some other way
                self._waiters.remove(waiter)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> HttpConnection:
        left = deadline - loop.time()
        bound = self.settings.connect_timeout_s
        if left <= 0:
            raise TimeoutError()
        settings = self.settings
        try:
            async with asyncio.timeout(min(bound, left)):
                _, connection = await loop.create_connection(
                    lambda: HttpConnection(settings.max_head_bytes, settings.max_body_bytes), self._host,
                    self._port, ssl=self._ssl, server_hostname=self._host if self._ssl else None)
        except TimeoutError:
            if left <= bound:
                raise  # the request's deadline, not the upstream's fault
            raise ConnectFailed(f"no connection within {bound:g} s") from None
        except OSError as exc:  # refused, unreachable, name unknown, TLS refused (SSLError is an OSError)
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        return connection

    def _release(self, loop: asyncio.AbstractEventLoop, connection: HttpConnection) -> None:
        if self._closed or not connection.reusable:
            self._discard(connection)
            return
        connection.idle_since = loop.time()
        if not self._wake(connection):
            self._idle.append(connection)

    def _discard(self, connection: HttpConnection) -> None:
        connection.close()
        self._open -= 1
        self._wake(None)

    def _wake(self, connection: HttpConnection | None) -> bool:
        """Hands `connection` (or, None, the room a closed one left) to the first waiter; False
        when nobody waits."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False
