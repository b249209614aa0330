"""Two apps from one configuration, one with the fast path of raw-body POST /v1/classify (the
default) and one without, driven with the same raw ASGI messages, for tests that compare them.

The fast path's app notes the requests it passes on to the general path, so a test also knows
which way a request went.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litestar import Litestar

from batchserve.server.app import create_app
from batchserve.server.fast_classify import ClassifyFastPath
from batchserve.server.options import build_config

_TIMING = re.compile(rb'"(queue|inference|total)":[0-9.e-]+')


def chunk(body: bytes, *, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


@dataclass
class Request:
    """One request as uvicorn would hand it to the app."""

    request_id: str
    query: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes | None = b""  # the whole body in one message; None: `chunks` instead
    chunks: list[dict[str, Any]] = field(default_factory=list)
    stall: bool = False  # after the chunks, the client sends nothing more (nor hangs up)
    method: str = "POST"
    path: str = "/v1/classify"


@dataclass
class Exchange:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def exchange(app: Litestar, request: Request) -> Exchange:
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": request.method, "scheme": "http", "path": request.path, "raw_path": request.path.encode(),
        "query_string": request.query, "root_path": "", "client": ("127.0.0.1", 40000), "server": ("testserver", 80),
        "headers": [(b"x-request-id", request.request_id.encode()), (b"user-agent", b"twin-test"),
                    *request.headers],
    }
    incoming = ([chunk(request.body, more=False)] if request.body is not None
                else list(request.chunks))

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        if request.stall:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)  # type: ignore[arg-type]
    start, *bodies = sent
    assert start["type"] == "http.response.start" and all(m["type"] == "http.response.body" for m in bodies)
    return Exchange(start["status"], list(start["headers"]), b"".join(m.get("body", b"") for m in bodies))


def comparable(answer: Exchange) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The answer with its measured timings masked, and Content-Length checked then masked with them.
    (Litestar lists a 405's allowed methods in no fixed order: they are sorted.)"""
    declared = dict(answer.headers)[b"content-length"]
    assert int(declared) == len(answer.body)
    masked = {b"content-length": b"N"}
    if b"allow" in dict(answer.headers):
        masked[b"allow"] = b", ".join(sorted(dict(answer.headers)[b"allow"].split(b", ")))
    headers = [(name, masked.get(name, value)) for name, value in answer.headers]
    return answer.status, headers, _TIMING.sub(rb'"\1":0', answer.body)


@dataclass
class Twins:
    fast: Litestar
    general: Litestar
    folders: tuple[Path, Path]
    passed_on: set[str] = field(default_factory=set)  # the ids of the requests the fast path left to the route

    @property
    def apps(self) -> tuple[Litestar, Litestar]:
        return self.fast, self.general

    async def both(self, request: Request) -> tuple[Exchange, bool]:
        """The request to each app; asserts the answers match and returns the fast path app's answer,
        and whether the fast path took it."""
        fast = await exchange(self.fast, request)
        general = await exchange(self.general, request)
        assert comparable(fast) == comparable(general), request
        return fast, request.request_id not in self.passed_on

    async def each(self, change: Callable[[Litestar], Awaitable[None] | None]) -> None:
        for app in self.apps:
            outcome = change(app)
            if outcome is not None:
                await outcome


@asynccontextmanager
async def twins(tmp_path: Path, **settings: Any) -> AsyncIterator[Twins]:
    """The two apps, started, each with its own events in `tmp_path`/fast or /general."""
    folders = (tmp_path / "fast", tmp_path / "general")
    apps = []
    for folder, fast_path in zip(folders, (True, False), strict=True):
        configured = {"events": True, "events_path": folder / "events.sqlite3", "journal_dir": folder / "journal",
                      "events_flush_interval_ms": 20, **settings}
        apps.append(create_app(build_config(configured), fast_path=fast_path))
    fast, general = apps
    assert isinstance(fast.asgi_handler, ClassifyFastPath) and not isinstance(general.asgi_handler, ClassifyFastPath)
    pair = Twins(fast, general, folders)
    fast_path, general_path = fast.asgi_handler, fast.asgi_handler.app

    async def noting_what_passes(scope: Any, receive: Any, send: Any) -> None:
        pair.passed_on.add(dict(scope["headers"])[b"x-request-id"].decode())
        await general_path(scope, receive, send)

    fast_path.app = noting_what_passes
    async with fast.lifespan(), general.lifespan():
        yield pair


def events(folder: Path) -> list[tuple[Any, ...]]:
    """What the app recorded, in the order requests were made (their ids sort so)."""
    with sqlite3.connect(folder / "events.sqlite3") as db:
        return db.execute(
            "SELECT f.request_id, f.route, f.model_name, f.model_version, f.status, f.error_code, f.score,"
            " f.batch_size, u.user_name FROM api_event_fact f JOIN user_dim u USING (user_key)"
            " ORDER BY f.request_id, f.fact_key").fetchall()


def http_metrics(app: Litestar) -> list[str]:
    text = app.state["app_state"].metrics.exposition(None)[0].decode()
    counted = ("batchserve_http_requests_total", "batchserve_http_request_duration_seconds_count",
               "batchserve_admission_")
    return sorted(line for line in text.splitlines() if line.startswith(counted))
