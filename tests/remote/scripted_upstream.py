"""A small real HTTP/1.1 server on 127.0.0.1 that answers as a batchserve upstream would, or as a
broken one would, path by path: what the web tier's client must survive, and a count of every
connection and request it took.

Paths: /readyz and /v1/models as batchserve answers them (the models of MODELS); POST
/v1/classify?model=M answers by M: `plain`, `cached` (the result cache's marker), `fallback`
(answered by `backup`), `mixed` (multipart: cache hits and fallback answers by turns), and the
faults below. Faults at their own paths (and as models): `stale` (the second request on a
connection is read and the connection closed unanswered), `partial` (part of an answer, then
close), `malformed`, `huge` (declares 32 MiB), `endless` (chunks until the client gives up),
`hugehead` (a 100 KiB header), `hang` (never answers), `close-after` (answers, then closes the idle
connection), `chunked`, `continue` (100 Continue first), `until-close` (a body without length).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

MODELS = ("plain", "cached", "fallback", "backup", "mixed", "malformed", "huge", "endless", "hugehead", "partial")


def _listing() -> dict[str, Any]:
    batching = {"max_batch_size": 8, "max_queue_delay_ms": 0, "preferred_batch_sizes": [], "max_queue_size": 64,
                "max_inflight_batches": 1, "default_timeout_ms": 0, "max_timeout_ms": 60000}
    return {"models": [{"name": name, "version": 1, "classes": 10, "batching": batching}
                       for name in MODELS], "default_model": "plain"}


def _result(model: str, *, cached: bool = False, fallback_for: str | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "model": "backup" if fallback_for else model, "model_version": 1,
        "predictions": [{"class_id": 1, "label": "one", "score": 0.75}, {"class_id": 2, "label": "two", "score": 0.25}],
        "timing_ms": {"queue": 0.0 if cached else 1.5, "inference": 0.0 if cached else 2.5, "total": 5.0},
        "batch_size": 0 if cached else 1}
    if cached:
        answer["cache"] = "hit"
    if fallback_for:
        answer.update(fallback=True, fallback_for=fallback_for)
    return answer


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedUpstream:
    connections: int = 0
    requests: Counter[str] = field(default_factory=Counter)  # by path
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @classmethod
    @contextmanager
    def in_thread(cls) -> Iterator[ScriptedUpstream]:
        """One running on its own event loop in a thread, for a server process to call."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()
        upstream = asyncio.run_coroutine_threadsafe(cls().start(), loop).result(10)
        try:
            yield upstream
        finally:
            asyncio.run_coroutine_threadsafe(upstream.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        on_this_connection = 0
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request_line, *lines = head.split("\r\n")
                method, target, _ = request_line.split(" ")
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                path, _, query = target.partition("?")
                on_this_connection += 1
                self.requests[path] += 1
                self.seen.append(Seen(method, target, headers, body))
                behaviour = path.strip("/")
                if path == "/v1/classify":
                    behaviour = parse_qs(query).get("model", ["plain"])[0]
                if not await self._answer(behaviour, reader, writer, body, headers, on_this_connection):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, behaviour: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      body: bytes, headers: dict[str, str], on_this_connection: int) -> bool:
        """Answers one request; False: the connection closes."""
        if behaviour == "readyz":
            return await _json(writer, {"status": "ready", "models": {"plain": 1}})
        if behaviour == "v1/models":
            return await _json(writer, _listing())
        if behaviour in ("plain", "stale") and not (behaviour == "stale" and on_this_connection > 1):
            return await _json(writer, _result("plain"))
        if behaviour == "stale":
            return False  # read, never answered: what a server closing an idle connection just then does
        if behaviour == "cached":
            return await _json(writer, _result("cached", cached=True))
        if behaviour == "fallback":
            return await _json(writer, _result("backup", fallback_for="fallback"))
        if behaviour == "mixed":
            files = body.count(b"Content-Disposition")
            results = [{"filename": str(i), **_result("mixed", cached=i % 2 == 0,
                                                      fallback_for=None if i % 2 == 0 else "mixed")}
                       for i in range(files)]
            return await _json(writer, {"results": results})
        return await _fault(behaviour, reader, writer)


async def _json(writer: asyncio.StreamWriter, payload: dict[str, Any], status: int = 200) -> bool:
    data = json.dumps(payload).encode()
    writer.write(f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                 f"\r\n".encode() + data)
    await writer.drain()
    return True


async def _fault(behaviour: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    if behaviour == "partial":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    elif behaviour == "malformed":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n{}")
    elif behaviour == "huge":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 33554432\r\n\r\n" + bytes(65536))
    elif behaviour == "hugehead":
        writer.write(b"HTTP/1.1 200 OK\r\nX-Filler: " + b"x" * 100_000 + b"\r\nContent-Length: 2\r\n\r\n{}")
    elif behaviour == "endless":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + bytes(65536) + b"\r\n"
        for _ in range(640):  # 40 MiB at most: far past any bound, and the test ends either way
            if writer.is_closing() or reader.at_eof():
                break
            writer.write(chunk)
            await writer.drain()
    elif behaviour == "hang":
        await reader.read()  # until the client gives up and closes
    elif behaviour == "close-after":
        await _json(writer, {"ok": True})
    elif behaviour == "chunked":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nhel\r\n3\r\nlo \r\n5\r\nworld\r\n0\r\n\r\n")
        await writer.drain()
        return True
    elif behaviour == "continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return await _json(writer, {"ok": True})
    elif behaviour == "until-close":
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
    else:
        await _json(writer, {"error": {"code": "not_found", "message": behaviour}}, status=404)
        return True
    await writer.drain()
    return False
