"""The front door under `--auth required` and `--auth off`, through the real app and a real key table:
who gets in, with which scope, what the refusals look like, and that nothing is read before."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from litestar import Litestar

from batchserve.server.auth.keys import key_digest
from tests.server.conftest import jpeg_bytes
from tests.server.keyring import add_key, app_client, bearer, gatekeeper_of, reload_keys, revoke_key, unique

REQUIRED = {"auth": "required"}
Serve = Callable[..., AbstractAsyncContextManager[tuple[httpx.AsyncClient, Litestar]]]


@pytest.fixture
def serve(built_models: Path, tmp_path: Path) -> Serve:
    """`async with serve(**settings) as (client, app)`: the tiny model, keys in tmp_path/events.sqlite3."""
    return functools.partial(app_client, built_models, tmp_path)


async def test_no_key_unknown_key_and_revoked_key_get_401(serve: Serve, tmp_path: Path) -> None:
    alice = await add_key(tmp_path / "events.sqlite3", "alice", ("classify",))
    async with serve(**REQUIRED) as (client, app):
        none = await client.post("/v1/classify", content=jpeg_bytes())
        unknown = await client.post("/v1/classify", content=jpeg_bytes(), headers=bearer("bsk_not-a-real-key"))
        ok = await client.post("/v1/classify", content=jpeg_bytes(), headers=bearer(alice.key))
        await revoke_key(tmp_path / "events.sqlite3", "alice")
        await reload_keys(app)
        revoked = await client.post("/v1/classify", content=jpeg_bytes(), headers=bearer(alice.key))
    assert ok.status_code == 200
    for answer in (none, unknown, revoked):
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert answer.headers["X-Request-ID"]
    assert "needs an API key" in none.json()["error"]["message"]
    assert "not valid" in unknown.json()["error"]["message"]


async def test_every_header_form_is_accepted(serve: Serve, tmp_path: Path) -> None:
    alice = await add_key(tmp_path / "events.sqlite3", "alice", ("classify",))
    async with serve(**REQUIRED) as (client, app):
        answers = [
            await client.get("/v1/models", headers=headers)
            for headers in ({"Authorization": f"Bearer {alice.key}"}, {"Authorization": f"bearer  {alice.key} "},
                            {"X-API-Key": alice.key}, {"X-Admin-Key": alice.key})
        ]
        basic = await client.get("/v1/models", headers={"Authorization": f"Basic {alice.key}"})
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert basic.status_code == 401


async def test_expired_key_gets_401(serve: Serve, tmp_path: Path) -> None:
    old = await add_key(tmp_path / "events.sqlite3", "old", ("classify",),
                        expires=datetime.now(UTC) - timedelta(seconds=1))
    async with serve(**REQUIRED) as (client, app):
        answer = await client.get("/v1/models", headers=bearer(old.key))
    assert answer.status_code == 401


async def test_a_key_created_while_the_server_runs_works_at_once(serve: Serve, tmp_path: Path) -> None:
    async with serve(**REQUIRED) as (client, app):
        assert (await client.get("/v1/models", headers=bearer("bsk_unknown"))).status_code == 401
        late = await add_key(tmp_path / "events.sqlite3", "late", ("classify",))
        answer = await client.get("/v1/models", headers=bearer(late.key))
    assert answer.status_code == 200


async def test_scopes_decide_which_routes_a_key_reaches(serve: Serve, tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    classify = await add_key(db, "classifier", ("classify",))
    stats = await add_key(db, "analyst", ("stats",))
    async with serve(**REQUIRED, events=True) as (client, app):
        c, s = bearer(classify.key), bearer(stats.key)
        assert (await client.post("/v1/classify", content=jpeg_bytes(), headers=c)).status_code == 200
        assert (await client.get("/v1/models/tiny", headers=c)).status_code == 200
        assert (await client.get("/v2/models/tiny", headers=c)).status_code == 200
        assert (await client.get("/v2/models/tiny/ready", headers=c)).status_code == 200
        assert (await client.post("/v2/repository/index", headers=c)).status_code == 200
        assert (await client.get("/v1/stats", headers=s)).status_code == 200
        assert (await client.get("/metrics", headers=s)).status_code == 200
        refused = {
            "classify key on /v1/stats": await client.get("/v1/stats", headers=c),
            "classify key on /metrics": await client.get("/metrics", headers=c),
            "stats key on /v1/classify": await client.post("/v1/classify", content=jpeg_bytes(), headers=s),
            "stats key on infer": await client.post("/v2/models/tiny/infer", json={"inputs": []}, headers=s),
            "classify key on model control": await client.post("/v2/repository/models/tiny/load", headers=c),
        }
    for what, answer in refused.items():
        assert answer.status_code == 403, what
    assert refused["classify key on /v1/stats"].json()["error"]["code"] == "forbidden"
    assert "lacks the 'stats' scope" in refused["classify key on /v1/stats"].json()["error"]["message"]
    # The Open Inference Protocol's own error shape on /v2.
    assert isinstance(refused["stats key on infer"].json()["error"], str)


async def test_public_routes_answer_without_a_key(serve: Serve) -> None:
    async with serve(**REQUIRED) as (client, app):
        for path in ("/healthz", "/readyz", "/v2", "/v2/health/live", "/v2/health/ready", "/schema/openapi.json",
                     "/", "/upload", "/dashboard", "/about", "/static/js/api.js", "/static/js/auth.js"):
            answer = await client.get(path)
            assert answer.status_code == 200, path
        assert "X-RateLimit-Limit" not in answer.headers


async def test_unknown_paths_and_path_tricks_do_not_leak_or_bypass(serve: Serve, tmp_path: Path) -> None:
    classify = await add_key(tmp_path / "events.sqlite3", "classifier", ("classify",))
    async with serve(**REQUIRED) as (client, app):
        unknown_without_key = await client.get("/v1/secret-route")
        unknown_with_key = await client.get("/v1/secret-route", headers=bearer(classify.key))
        wrong_method = await client.get("/v1/classify")
        tricks = [await client.get(path, headers=bearer(classify.key))
                  for path in ("/v1/stats/", "/v1//stats", "/v1/%73tats", "/metrics/")]
    assert unknown_without_key.status_code == 401  # the same answer as for a route that exists
    assert unknown_with_key.status_code == 404
    assert wrong_method.status_code == 401
    assert [t.status_code for t in tricks] == [403, 403, 403, 403]


async def test_refusals_come_before_the_body_is_read(serve: Serve) -> None:
    consumed: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        for chunk in (b"\xff\xd8\xff", b"x" * 1024):
            consumed.append(chunk)
            yield chunk

    async with serve(**REQUIRED) as (client, app):
        answer = await client.post("/v1/classify", content=body(), headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 401
    assert consumed == []


async def test_rate_limit_answers_429_with_retry_after_and_headers(serve: Serve, tmp_path: Path) -> None:
    slow = await add_key(tmp_path / "events.sqlite3", unique("slow"), ("classify",), rate=1 / 3600, burst=3)
    async with serve(**REQUIRED) as (client, app):
        answers = [await client.get("/v1/models", headers=bearer(slow.key)) for _ in range(4)]
        health = await client.get("/healthz", headers=bearer(slow.key))
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert {a.headers["X-RateLimit-Limit"] for a in answers} == {"3"}
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 3000 < int(refused.headers["Retry-After"]) <= 3600
    assert health.status_code == 200 and "X-RateLimit-Limit" not in health.headers  # public routes draw nothing


async def test_unlimited_keys_carry_no_rate_headers(serve: Serve, tmp_path: Path) -> None:
    free = await add_key(tmp_path / "events.sqlite3", "free", ("classify",))
    async with serve(**REQUIRED) as (client, app):
        answer = await client.get("/v1/models", headers=bearer(free.key))
    assert answer.status_code == 200 and "X-RateLimit-Limit" not in answer.headers


async def test_the_bootstrap_admin_key_has_every_scope(serve: Serve) -> None:
    async with serve(**REQUIRED, admin_key="bootstrap-admin-key-0123", model_control="explicit") as (client, app):
        h = bearer("bootstrap-admin-key-0123")
        assert (await client.get("/v1/models", headers=h)).status_code == 200
        assert (await client.get("/metrics", headers=h)).status_code == 200
        assert (await client.post("/v2/repository/models/tiny/load", headers=h)).status_code == 200
        assert (await client.post("/v2/repository/models/tiny/load",
                                  headers=bearer("bootstrap-admin-key-0124"))).status_code == 401


async def test_model_control_takes_a_stored_admin_key_and_refuses_other_scopes(serve: Serve, tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    admin = await add_key(db, "operator", ("admin",))
    classify = await add_key(db, "classifier", ("classify",))
    async with serve(admin_key="bootstrap-admin-key-0123", model_control="explicit") as (client, app):
        # --auth off: nothing else needs a key, model control still does.
        assert (await client.get("/v1/models")).status_code == 200
        assert (await client.post("/v2/repository/models/tiny/load", headers=bearer(admin.key))).status_code == 200
        forbidden = await client.post("/v2/repository/models/tiny/load", headers=bearer(classify.key))
        anonymous = await client.post("/v2/repository/models/tiny/load")
    assert forbidden.status_code == 403 and "lacks the 'admin' scope" in forbidden.json()["error"]
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")


async def test_auth_off_keeps_routes_open_but_applies_a_known_keys_limit(serve: Serve, tmp_path: Path) -> None:
    capped = await add_key(tmp_path / "events.sqlite3", unique("capped"), ("classify",), rate=1 / 3600, burst=1)
    async with serve() as (client, app):
        await reload_keys(app)  # nothing waits for the key table's first read under --auth off: the test does
        assert (await client.get("/v1/models")).status_code == 200
        assert (await client.get("/v1/models", headers=bearer("bsk_whatever"))).status_code == 200
        first = await client.get("/v1/models", headers=bearer(capped.key))
        second = await client.get("/v1/models", headers=bearer(capped.key))
    assert first.status_code == 200 and second.status_code == 429


async def test_events_name_the_key_never_the_key_itself(serve: Serve, tmp_path: Path) -> None:
    db = tmp_path / "events.sqlite3"
    alice = await add_key(db, "alice", ("classify",))
    async with serve(events=True) as (client, app):  # --auth off: every kind of caller gets through
        # Under --auth off nothing waits for the key table's first read: the test does, so that
        # alice's key is known when her request comes.
        await reload_keys(app)
        await client.post("/v1/classify", content=jpeg_bytes(), headers=bearer(alice.key))
        await client.post("/v1/classify", content=jpeg_bytes(), headers={"X-API-Key": "made-up-key"})
        await client.post("/v1/classify", content=jpeg_bytes())
    async with serve(events=True, **REQUIRED) as (client, app):
        refused = await client.post("/v1/classify", content=jpeg_bytes(), headers=bearer("bsk_refused-key"))
    assert refused.status_code == 401
    with sqlite3.connect(db) as con:
        users = {row[0] for row in con.execute(
            "SELECT u.user_name FROM api_event_fact f JOIN user_dim u USING (user_key)")}
        statuses = [row[0] for row in con.execute("SELECT status FROM api_event_fact ORDER BY event_ts")]
        dump = "\n".join(con.iterdump())
    made_up_id = "key-" + key_digest("made-up-key")[:16]
    refused_id = "key-" + key_digest("bsk_refused-key")[:16]
    assert users == {"alice", made_up_id, "anonymous", refused_id}
    assert statuses.count(401) == 1  # the refused classification left its event
    for secret in (alice.key, "made-up-key", "bsk_refused-key"):
        assert secret not in dump


async def test_keys_cannot_be_checked_before_the_key_table_was_read(serve: Serve) -> None:
    # A database that refuses connections: nobody can tell a key valid, so a key gets 503, not 401.
    async with serve(**REQUIRED, database_url="postgresql://postgres@127.0.0.1:1/none",
                     admin_key="bootstrap-admin-key-0123") as (client, app):
        with_key = await client.get("/v1/models", headers=bearer("bsk_maybe-valid"))
        without = await client.get("/v1/models")
        admin = await client.get("/v1/models", headers=bearer("bootstrap-admin-key-0123"))
    assert with_key.status_code == 503 and with_key.json()["error"]["code"] == "auth_unavailable"
    assert with_key.headers["Retry-After"]
    assert without.status_code == 401
    assert admin.status_code == 200  # the bootstrap key needs no database


async def test_the_schema_tells_clients_about_auth(serve: Serve) -> None:
    async with serve(**REQUIRED) as (client, app):
        required = (await client.get("/schema/openapi.json")).json()
    async with serve() as (client, app):
        optional = (await client.get("/schema/openapi.json")).json()
    schemes = required["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["apiKeyHeader"]["in"] == "header" and schemes["apiKeyHeader"]["name"] == "X-API-Key"
    classify = required["paths"]["/v1/classify"]["post"]
    assert classify["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
    assert {"401", "403", "429"} <= set(classify["responses"])
    assert required["paths"]["/healthz"]["get"]["security"] == []
    assert optional["paths"]["/v1/classify"]["post"]["security"] == [{}, {"bearerAuth": []}, {"apiKeyHeader": []}]
    assert "401" not in optional["paths"]["/v1/classify"]["post"]["responses"]
    load = optional["paths"]["/v2/repository/models/{name}/load"]["post"]
    assert load["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]  # model control always needs a key


async def test_every_route_has_an_access_rule(serve: Serve) -> None:
    async with serve() as (_, app):
        policy = gatekeeper_of(app).policy
        templates = [route.path_format or "/" for route in app.routes]
    missing = [t for t in templates if not policy.has_rule(t)]
    assert not missing, f"routes without an access rule (they would need any valid key): {missing}"
