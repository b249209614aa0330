"""Bounds on a request's head (request line and headers), which uvicorn and httptools leave open: a
head larger than `max_header_bytes` is answered 431 `headers_too_large`, one not complete within
`header_read_timeout_s` 408 `request_timeout`, and either way the connection is closed.

Without them one header of 100 MiB was read whole (the parser accumulates a header's value until it
ends), and a head trickled a byte at a time held its connection for as long as the client liked.

The cost per request is a few attribute updates: bytes are counted per chunk the transport hands
over (`len(data)`), never per byte. Only when the chunks a head came in hold more than the limit
(a large body arriving with its head, or a head over the limit) is the head measured as parsed. A
head that arrives in one chunk, as nearly all do, never arms a timer. A connection's first request
is timed from the connection's start (a connection that never sends anything is closed, unanswered,
at the same deadline); a later one from its first byte, so a keep-alive connection idle between
requests is uvicorn's `timeout_keep_alive` business only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from batchserve.server.door import error_answer
from batchserve.server.early_refusal import EarlyRefusal, uvicorn_access_log
from batchserve.serving.errors import ErrorInfo

if TYPE_CHECKING:
    from litestar.types import HTTPScope

log = logging.getLogger("batchserve.http")
_base = HttpToolsProtocol  # called directly on the per-request path: cheaper than super()
# What the request line adds to its method and URL, a header line to its name and value, and the
# blank line that ends the head.
REQUEST_LINE_BYTES = len("  HTTP/1.1\r\n")
HEADER_LINE_BYTES = len(": \r\n")
END_BYTES = len("\r\n")
LINGER_S = 2.0


class HeadBoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on each request's head (see `head_bounded`), and,
    when given one, overload refusals answered before the app runs (server/early_refusal.py)."""

    max_header_bytes = 64 * 1024
    header_read_timeout_s = 10.0
    early_refusal: EarlyRefusal | None = None

    _head_open = False  # a request has begun and its headers are not complete yet
    _head_bytes = 0  # bytes of the chunks the open head came in: what it holds at most
    _head_slack = 0  # of those, bytes of its first chunk that may precede it (another request's)
    _chunk_size = 0  # size of the chunk being parsed
    _head_done_in_chunk = False  # a head completed earlier in the chunk being parsed
    _discarding = False  # a head was refused: nothing more on this connection is parsed or run
    _head_timer: asyncio.TimerHandle | None = None  # the head's deadline; after a refusal, the close
    _body_open = False  # a request's head is in and the rest of it (its body) is not
    _answers_transport: _LingeringClose  # the transport as each request's answer sees it

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._answers_transport = _LingeringClose(self)
        self._head_timer = self.loop.call_later(self.header_read_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._head_open = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        size = len(data)
        if self._head_open:
            self._head_bytes += size
        self._chunk_size = size
        self._head_done_in_chunk = False
        _base.data_received(self, data)
        if self._head_open and not self._discarding and not self.transport.is_closing():
            if self._head_bytes - self._head_slack > self.max_header_bytes:
                self._refuse_head(431, "headers_too_large", self._too_large_message())
            elif self._head_timer is None:
                # Armed only for a head that did not arrive in one chunk; it began in this one.
                self._head_timer = self.loop.call_later(self.header_read_timeout_s, self._head_timed_out)

    def on_message_begin(self) -> None:
        self._body_open = False
        if not self._head_open:
            self._head_open = True
            self._head_bytes = self._chunk_size
            # Begun after another request ended in this chunk, it holds an unknown part of it.
            self._head_slack = self._chunk_size if self._head_done_in_chunk else 0
        _base.on_message_begin(self)

    def on_headers_complete(self) -> None:
        if self._discarding:
            return
        self._head_open = False
        self._head_done_in_chunk = True
        if self._head_timer is not None:
            self._cancel_head_timer()
        if self._head_bytes > self.max_header_bytes and self._parsed_head_bytes() > self.max_header_bytes:
            self._refuse_head(431, "headers_too_large", self._too_large_message())
            return
        self._body_open = True
        _base.on_headers_complete(self)
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            # Its task is only scheduled yet: it closes through close_after_answer from the start.
            cycle.transport = self._answers_transport  # type: ignore[assignment]

    # The rest of a refused request (or of what follows it in the same chunk) is dropped, never
    # given to the earlier request's answer still in progress, if any.
    def on_body(self, body: bytes) -> None:
        if not self._discarding:
            _base.on_body(self, body)

    def on_message_complete(self) -> None:
        if self._discarding:
            return
        self._body_open = False
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and self.timeout_keep_alive_task is None \
                and not self.pipeline and not self.transport.is_closing():
            # Answered before its body ended (a refusal): uvicorn armed the idle timer with the
            # answer, and reading the rest of the body disarmed it. The connection is idle now.
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)
        _base.on_message_complete(self)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        early = self.early_refusal
        if early is not None and app is self.app:  # not uvicorn's own refusal past limit_concurrency
            try:
                answer = early.answer(cast("HTTPScope", cycle.scope), app,
                                      uvicorn_access_log(cycle.access_logger) if cycle.access_log else None)
            except Exception:  # the app then answers it, as it would without the early refusal
                log.exception("early refusal failed")
                answer = None
            if answer is not None:
                cycle.response_started = cycle.response_complete = True
                cycle.waiting_for_100_continue = False
                status, headers, body = answer
                self.transport.write(self._http_answer(status, headers, body, keep_alive=cycle.keep_alive))
                if not cycle.keep_alive:
                    self.close_after_answer()
                cycle.on_response()
                return
        _base._start_asgi_task(self, cycle, app)

    def _parsed_head_bytes(self) -> int:
        """The head's size as parsed: written with one space after each colon, as clients do."""
        headers = sum(len(name) + len(value) + HEADER_LINE_BYTES for name, value in self.headers)
        return len(self.parser.get_method()) + len(self.url) + REQUEST_LINE_BYTES + headers + END_BYTES

    def _too_large_message(self) -> str:
        return f"the request line and headers exceed {self.max_header_bytes} bytes"

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _answer_outstanding(self) -> bool:
        """An earlier request on this connection is still being answered (or waits its turn)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._head_open:
            # Nothing of a request came since the connection opened: there is no request to answer, and
            # an answer could be read by a client as the one to a request it sends just now.
            self.transport.close()
        elif self._answer_outstanding():
            # The server, not the client, is behind (reading pauses while pipelined requests wait):
            # the client gets its time again once the earlier answers are out.
            self._head_timer = self.loop.call_later(self.header_read_timeout_s, self._head_timed_out)
        else:
            self._refuse_head(408, "request_timeout",
                              f"the request line and headers were not complete within {self.header_read_timeout_s:g} s")

    def close_after_answer(self) -> None:
        """Close after an answer that ends the connection (`Connection: close`, a 408 or 413 that
        closes). While the request's body is still coming, the close lingers instead: closed at
        once, a socket with unread bytes is reset, and the reset can destroy the answer before
        the client, still sending, reads it."""
        if not self._body_open or self.transport.is_closing():
            self.transport.close()
            return
        self._linger()

    def _linger(self) -> None:
        """Stop sending, read and drop what comes until the client closes, for LINGER_S at most."""
        self._discarding = True
        self._cancel_head_timer()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._head_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def _refuse_head(self, status: int, code: str, message: str) -> None:
        self._cancel_head_timer()
        self._head_open = False
        self._discarding = True
        log.info("%s: %s: %d, connection closed", _peer(self.client), message, status)
        if self._answer_outstanding():
            # An answer now would land inside the earlier one: the connection closes after the
            # earlier answers instead.
            self.cycle.keep_alive = False
            return
        url: bytes = getattr(self, "url", b"")  # set by uvicorn once a request began
        headers, body = error_answer(url.partition(b"?")[0].decode("latin-1"), ErrorInfo(status, code, message))
        self.transport.write(self._http_answer(status, headers, body, keep_alive=False))
        # The rest of a large head may still be coming: see close_after_answer.
        self._linger()


    def _http_answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, keep_alive: bool,
                     ) -> bytes:
        """An answer written by the protocol itself, as uvicorn writes one the app sends."""
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            content.extend((name, b": ", value, b"\r\n"))
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content.extend((b"\r\n", body))
        return b"".join(content)


class _LingeringClose:
    """The connection's transport as request cycles see it: their close after an answer goes
    through `close_after_answer`; everything else is the transport's own."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: HeadBoundedProtocol) -> None:
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_after_answer()

    def __getattr__(self, name: str) -> object:
        return getattr(self._protocol.transport, name)


def head_bounded(max_header_bytes: int, header_read_timeout_s: float,
                 early_refusal: EarlyRefusal | None = None) -> type[HeadBoundedProtocol]:
    """The protocol class with these bounds (and refusals), for `uvicorn.Config(http=...)`, which
    instantiates it."""

    class Bounded(HeadBoundedProtocol):
        pass

    Bounded.max_header_bytes = max_header_bytes
    Bounded.header_read_timeout_s = header_read_timeout_s
    Bounded.early_refusal = early_refusal
    return Bounded


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "client"
