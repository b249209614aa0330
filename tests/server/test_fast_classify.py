"""The fast path of raw-body POST /v1/classify answers exactly as Litestar's route does.

Two apps from one configuration, one with the fast path and one without (twin_apps.py), get the
same requests. Their answers must match byte for byte: status, every header in order, body (the
timings in a successful answer aside: they are measured, so only their place is compared). So must
the events they record and their HTTP metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar

from batchserve.events.keys import SqliteKeyStore, StoredKey
from batchserve.server.auth.keys import key_digest, new_key
from tests.server.conftest import jpeg_bytes, png_bytes
from tests.server.twin_apps import Request, Twins, chunk, events, http_metrics, twins

MAX_BODY = 50_000


@asynccontextmanager
async def tiny_twins(built_models: Path, tmp_path: Path, **overrides: Any) -> AsyncIterator[Twins]:
    async with twins(tmp_path, model_repo=built_models, models=("tiny",), max_body_bytes=MAX_BODY,
                     **overrides) as apps:
        yield apps


async def add_key(folders: tuple[Path, ...], name: str, scopes: tuple[str, ...], *, rate: float | None = None,
                  burst: int | None = None) -> str:
    """One key, the same in each app's key table."""
    key = new_key()
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        store = SqliteKeyStore(folder / "events.sqlite3")
        await store.open(migrate=True)
        try:
            now = datetime.now(UTC)
            await store.add(StoredKey(name, key_digest(key), scopes, rate, burst, now, None, None))
        finally:
            await store.close()
    return key


JPEG = jpeg_bytes()
PNG = png_bytes()
IMAGE = [(b"content-type", b"image/jpeg")]


def raw_cases() -> list[Request]:
    cases = [
        Request("good-jpeg", b"top_k=3", IMAGE, JPEG),
        Request("good-png-sniffed", b"", [], PNG),
        Request("octet-stream", b"top_k=1", [(b"content-type", b"application/octet-stream")], PNG),
        Request("type-with-parameters", b"", [(b"content-type", b"Image/JPEG; charset=binary")], JPEG),
        Request("model-and-version", b"model=tiny&version=1&top_k=2", IMAGE, JPEG),
        Request("blank-model", b"model=", IMAGE, JPEG),
        Request("deadline-given", b"timeout_ms=30000", IMAGE, JPEG),
        Request("deadline-header", b"", [*IMAGE, (b"x-request-timeout-ms", b"25000")], JPEG),
        Request("other-parameter-ignored", b"colour=red&top_k=2", IMAGE, JPEG),
        Request("bad-top-k", b"top_k=many", IMAGE, JPEG),
        Request("top-k-over-classes", b"top_k=100000", IMAGE, JPEG),
        Request("bad-version", b"version=abc", IMAGE, JPEG),
        Request("unknown-version", b"version=99", IMAGE, JPEG),
        Request("unknown-model", b"model=nope", IMAGE, JPEG),
        Request("bad-deadline", b"timeout_ms=-3", IMAGE, JPEG),
        Request("bad-deadline-header", b"", [*IMAGE, (b"x-request-timeout-ms", b"soon")], JPEG),
        Request("empty-body", b"", IMAGE, b""),
        Request("not-an-image", b"", [], b"these bytes are no picture"),
        Request("truncated-jpeg", b"", IMAGE, JPEG[:200]),
        Request("declared-type-differs", b"", [(b"content-type", b"image/png")], JPEG),
        Request("type-not-accepted", b"", [(b"content-type", b"text/plain")], JPEG),
        Request("tiff-refused", b"", [(b"content-type", b"image/tiff")], b"II*\x00" + bytes(60)),
        Request("declared-too-large", b"", [*IMAGE, (b"content-length", str(MAX_BODY + 1).encode())], JPEG),
        Request("streamed-too-large", b"", IMAGE, None, [
            chunk(bytes(MAX_BODY // 2 + 10), more=True),
            chunk(bytes(MAX_BODY // 2 + 10), more=False),
        ]),
        Request("streamed-in-pieces", b"", IMAGE, None, [
            chunk(JPEG[:100], more=True),
            chunk(b"", more=True),
            chunk(JPEG[100:], more=False),
        ]),
        Request("client-left", b"", IMAGE, None, [chunk(JPEG[:100], more=True)]),
    ]
    return [Request(f"{n:03d}-{c.request_id}", c.query, c.headers, c.body, c.chunks) for n, c in enumerate(cases)]


async def test_raw_requests_get_the_route_s_answers_events_and_metrics(built_models: Path, tmp_path: Path) -> None:
    statuses = {}
    async with tiny_twins(built_models, tmp_path) as apps:
        for request in raw_cases():
            answer, took_fast_path = await apps.both(request)
            assert took_fast_path, request
            statuses[request.request_id.split("-", 1)[1]] = answer.status
        assert http_metrics(apps.fast) == http_metrics(apps.general)
    assert statuses["good-jpeg"] == statuses["good-png-sniffed"] == statuses["streamed-in-pieces"] == 200
    assert statuses["client-left"] == 400
    assert statuses["bad-top-k"] == statuses["bad-deadline-header"] == 422
    assert statuses["unknown-model"] == statuses["unknown-version"] == 404
    assert statuses["declared-too-large"] == statuses["streamed-too-large"] == 413
    assert statuses["type-not-accepted"] == statuses["tiff-refused"] == 415
    assert statuses["empty-body"] == statuses["not-an-image"] == 400
    recorded = events(apps.folders[0])
    assert len(recorded) == len(raw_cases())  # one event each, the refused ones included
    assert recorded == events(apps.folders[1])


async def test_overload_draining_and_slow_bodies_are_refused_alike(built_models: Path, tmp_path: Path) -> None:
    async with tiny_twins(built_models, tmp_path, max_concurrent_requests=2, body_read_timeout_s=0.2) as apps:
        def fill(app: Litestar) -> None:
            gate = app.state["app_state"].admission
            while gate.requests.try_take():
                pass

        await apps.each(fill)
        overloaded, _ = await apps.both(Request("a-overloaded", b"", IMAGE, JPEG))
        await apps.each(lambda app: app.state["app_state"].admission.requests.release(2))

        await apps.each(lambda app: setattr(app.state["app_state"].lifecycle, "refusing", True))
        draining, _ = await apps.both(Request("b-draining", b"", IMAGE, JPEG))
        await apps.each(lambda app: setattr(app.state["app_state"].lifecycle, "refusing", False))

        slow = Request("c-slow-body", b"", IMAGE, None, [chunk(JPEG[:50], more=True)], stall=True)
        timed_out, _ = await apps.both(slow)
        continuing = Request("d-continue-refused", b"", [*IMAGE, (b"expect", b"100-continue")], JPEG)
        await apps.each(fill)
        refused_continue, _ = await apps.both(continuing)
        await apps.each(lambda app: app.state["app_state"].admission.requests.release(2))
        after, _ = await apps.both(Request("e-after", b"", IMAGE, JPEG))
        assert http_metrics(apps.fast) == http_metrics(apps.general)
        assert not apps.passed_on
    assert (overloaded.status, draining.status, timed_out.status, after.status) == (503, 503, 408, 200)
    assert (b"connection", b"close") in timed_out.headers and (b"connection", b"close") in refused_continue.headers
    assert events(apps.folders[0]) == events(apps.folders[1])


async def test_keys_scopes_and_rate_limits_answer_alike(built_models: Path, tmp_path: Path) -> None:
    folders = (tmp_path / "fast", tmp_path / "general")
    classify_key = await add_key(folders, "classifier", ("classify",))
    stats_key = await add_key(folders, "analyst", ("stats",))
    limited_key = await add_key(folders, "limited", ("classify",), rate=0.01, burst=1)
    requests = [
        Request("a-no-key", b"", IMAGE, JPEG),
        Request("b-unknown-key", b"", [*IMAGE, (b"authorization", b"Bearer bsk_unknown")], JPEG),
        Request("c-wrong-scope", b"", [*IMAGE, (b"x-api-key", stats_key.encode())], JPEG),
        Request("d-good-key", b"top_k=2", [*IMAGE, (b"authorization", f"Bearer {classify_key}".encode())], JPEG),
        Request("e-limited-first", b"", [*IMAGE, (b"x-api-key", limited_key.encode())], JPEG),
        Request("f-limited-again", b"", [*IMAGE, (b"x-api-key", limited_key.encode())], JPEG),
        Request("g-limited-bad-param", b"top_k=0x", [*IMAGE, (b"x-api-key", limited_key.encode())], JPEG),
    ]
    async with tiny_twins(built_models, tmp_path, auth="required") as apps:
        answers = {r.request_id: (await apps.both(r))[0] for r in requests}
        assert http_metrics(apps.fast) == http_metrics(apps.general)
        assert not apps.passed_on
    assert [a.status for a in answers.values()] == [401, 401, 403, 200, 200, 429, 429]
    assert b"x-ratelimit-remaining" in dict(answers["e-limited-first"].headers)
    assert events(folders[0]) == events(folders[1])


@pytest.mark.parametrize("request_", [
    Request("multipart", b"", [(b"content-type", b"multipart/form-data; boundary=XyZ")],
            b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n--XyZ--\r\n"),
    Request("repeated-top-k", b"top_k=2&top_k=3", IMAGE, JPEG),
    Request("repeated-model", b"model=nope&model=tiny", IMAGE, JPEG),
    Request("two-content-types", b"", [*IMAGE, (b"content-type", b"text/plain")], JPEG),
    Request("two-deadline-headers", b"", [*IMAGE, (b"x-request-timeout-ms", b"30000"), (b"x-request-timeout-ms", b"x")],
            JPEG),
    Request("trailing-slash", b"", IMAGE, JPEG, path="/v1/classify/"),
    Request("other-method", b"", IMAGE, b"", method="PUT"),
], ids=lambda r: r.request_id)
async def test_what_the_fast_path_leaves_to_the_route(built_models: Path, tmp_path: Path, request_: Request) -> None:
    async with tiny_twins(built_models, tmp_path) as apps:
        _, took_fast_path = await apps.both(request_)
    assert not took_fast_path
