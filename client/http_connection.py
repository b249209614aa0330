"""One keep-alive HTTP/1.1 connection to an upstream: a request goes out in one write, its answer
is parsed by httptools (the parser uvicorn uses) as the bytes arrive, within size bounds.

The web tier's own hop costs what this costs, so it is an asyncio Protocol and not a stream: no
reader task, no buffer copies, one future per exchange. Bounds: the status line and headers may
take `max_head_bytes`, the body `max_body_bytes` (a declared Content-Length above it fails at
once, a chunked or unlimited body once it passes it), so an upstream that sends too much costs
this process at most about that much memory per connection. Anything that is not an HTTP/1.1
answer, or comes when no request is out, ends the connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import httptools


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


class ConnectionLost(Exception):
    """The connection ended before the whole answer came. `received`: bytes of it that did come
    (none: the upstream never saw, or never took up, the request)."""

    def __init__(self, message: str, *, received: int) -> None:
        super().__init__(message)
        self.received = received


class BadAnswer(Exception):
    """What came back is not an HTTP answer this side takes: malformed, or past the size bounds."""


def _kib(count: int) -> str:
    return f"{count // 1024} KiB" if count < 1024 * 1024 else f"{count // (1024 * 1024)} MiB"


class HttpConnection(asyncio.Protocol):
    def __init__(self, max_head_bytes: int, max_body_bytes: int) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self.idle_since = 0.0  # the pool's: when the last exchange ended
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._waiter: asyncio.Future[HttpAnswer] | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._received = 0
        self._head_done = False
        self._head_bytes = 0
        self._message_done = False
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._failure: BadAnswer | None = None
        self._keep_alive = False

    # ---- use ------------------------------------------------------------------------------
    @property
    def reusable(self) -> bool:
        """Open, idle, and the last answer left it fit for another request."""
        transport = self._transport
        return (not self._closed and self._waiter is None and self._keep_alive and transport is not None
                and not transport.is_closing())

    def exchange(self, request: bytes) -> asyncio.Future[HttpAnswer]:
        """Writes the request (all of it, head and body); the future gets the answer, or
        ConnectionLost / BadAnswer. Whoever stops waiting on it closes the connection."""
        transport = self._transport
        if transport is None or self._closed or self._waiter is not None:
            raise RuntimeError("the connection is not free for a request")
        self._reset()
        self._parser = httptools.HttpResponseParser(self)
        waiter: asyncio.Future[HttpAnswer] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        transport.write(request)
        return waiter

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Ends it at once, unsent bytes and all (an abandoned exchange: nobody reads the answer)."""
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    # ---- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports subclass no asyncio class

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: this connection is out of step
            self.abort()
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the upstream switched protocols"))
            return
        except httptools.HttpParserError as exc:
            self._fail(self._failure or BadAnswer(f"its answer is not valid HTTP/1.1 ({exc})"))
            return
        if self._failure is not None:
            self._fail(self._failure)
        elif self._message_done:
            self._finish()
        elif not self._head_done and self._received > self.max_head_bytes:
            self._fail(BadAnswer(f"its answer's headers run past {_kib(self.max_head_bytes)}"))

    def eof_received(self) -> bool:
        if self._waiter is not None and self._head_done and self._until_close():
            self._message_done = True  # the body was "all until the connection closes"
            self._finish()
        self._lost("the upstream closed the connection")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(f"the connection was lost ({type(exc).__name__}: {exc})" if exc else
                   "the upstream closed the connection")

    # ---- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._message_done:  # a second answer to one request
            self._failure = BadAnswer("it sent more than one answer to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head_bytes:  # a head that arrived whole in one read
            self._failure = self._failure or BadAnswer(f"its answer's headers run past {_kib(self.max_head_bytes)}")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and the like: the answer proper follows
            self._headers = {}
            return
        self._status, self._head_done = status, True
        declared = self._headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            self._failure = BadAnswer(f"its answer's body of {declared} bytes is over the "
                                      f"{_kib(self.max_body_bytes)} this server takes")

    def on_body(self, body: bytes) -> None:
        if self._failure is not None:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self.max_body_bytes:
            self._failure = BadAnswer(f"its answer's body runs past the {_kib(self.max_body_bytes)} this server takes")
            self._body = []
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._head_done:  # the end of an interim (1xx) answer
            return
        self._message_done = True
        self._keep_alive = self._parser.should_keep_alive()

    # ---- outcomes -------------------------------------------------------------------------
    def _until_close(self) -> bool:
        """Whether the answer's body has no length of its own: it ends when the connection does."""
        return "content-length" not in self._headers and "transfer-encoding" not in self._headers

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpAnswer(self._status, self._headers, body))
        if not self._keep_alive:
            self.close()

    def _fail(self, error: BadAnswer) -> None:
        waiter, self._waiter = self._waiter, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _lost(self, message: str) -> None:
        self._closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionLost(message, received=self._received))
