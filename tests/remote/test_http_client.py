"""The web tier's HTTP client against real upstreams (batchserve processes, plain and HTTPS) and a
scripted server over a socket for the faults no batchserve server makes on purpose."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import psutil
import pytest

from batchserve.client.pooled_http import (
    BadAnswer,
    ClientSettings,
    ConnectFailed,
    ConnectionLost,
    UpstreamClient,
    tls_context,
)
from tests.remote.conftest import Cluster, trusting
from tests.remote.scripted_upstream import ScriptedUpstream

pytestmark = pytest.mark.slow
CLASSIFY = "/v1/classify?model=simulated&version=1&top_k=3"
JPEG = "Content-Type: image/jpeg\r\n"


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    upstream = await ScriptedUpstream().start()
    yield upstream
    await upstream.stop()


def _peer_ports(pid: int, port: int) -> set[int]:
    """The client ports of the connections a server process has open on `port`, as it sees them."""
    return {c.raddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.laddr.port == port and c.raddr and c.status == psutil.CONN_ESTABLISHED}


async def test_one_connection_carries_every_request_in_turn(cluster: Cluster, chelsea: bytes) -> None:
    upstream = cluster.fast_a
    before = _peer_ports(upstream.process.pid, upstream.port)
    client = UpstreamClient(upstream.url, ClientSettings(connections=4))
    seen: set[int] = set()
    try:
        for _ in range(12):
            answer = await client.request("POST", CLASSIFY, body=chelsea, headers=JPEG, timeout_s=10)
            assert answer.status == 200 and len(json.loads(answer.body)["predictions"]) == 3
            seen |= _peer_ports(upstream.process.pid, upstream.port) - before
        assert len(seen) == 1  # the server saw one client connection throughout
        assert client.open_connections == 1
    finally:
        await client.close()


async def test_concurrent_requests_share_a_bounded_pool(cluster: Cluster, chelsea: bytes) -> None:
    upstream = cluster.fast_a
    before = _peer_ports(upstream.process.pid, upstream.port)
    client = UpstreamClient(upstream.url, ClientSettings(connections=2))
    seen: set[int] = set()

    async def one() -> int:
        answer = await client.request("POST", CLASSIFY, body=chelsea, headers=JPEG, timeout_s=20)
        seen.update(_peer_ports(upstream.process.pid, upstream.port) - before)
        return answer.status

    try:
        assert await asyncio.gather(*(one() for _ in range(8))) == [200] * 8
        assert len(seen) <= 2 and client.open_connections <= 2
    finally:
        await client.close()


async def test_the_deadline_is_enforced_here(cluster: Cluster, chelsea: bytes) -> None:
    """No X-Request-Timeout-Ms goes: only this side's deadline can end the 50 ms classification."""
    client = UpstreamClient(cluster.tight.url, ClientSettings())
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.request("POST", CLASSIFY, body=chelsea, headers=JPEG, timeout_s=0.01)
        assert time.monotonic() - started < 0.5
        assert client.open_connections == 0  # the abandoned exchange's connection is closed
    finally:
        await client.close()


async def test_https_upstreams_are_verified(cluster: Cluster, chelsea: bytes,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trusted = UpstreamClient(cluster.tls.url, ClientSettings(), ssl_context=trusting(cluster.tls_cert))
    untrusted = UpstreamClient(cluster.tls.url, ClientSettings())  # the system's CAs only
    try:
        assert (await trusted.request("GET", "/readyz", timeout_s=10)).status == 200
        for _ in range(2):
            answer = await trusted.request("POST", CLASSIFY, body=chelsea, headers=JPEG, timeout_s=10)
            assert answer.status == 200 and json.loads(answer.body)["model"] == "simulated"
        assert trusted.open_connections == 1
        with pytest.raises(ConnectFailed, match="certificate verify failed"):
            await untrusted.request("GET", "/readyz", timeout_s=10)
    finally:
        await trusted.close()
        await untrusted.close()
    # What a web tier does: the default context, which OpenSSL points at SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(cluster.tls_cert))
    by_env = UpstreamClient(cluster.tls.url, ClientSettings(), ssl_context=tls_context())
    try:
        assert (await by_env.request("GET", "/readyz", timeout_s=10)).status == 200
    finally:
        await by_env.close()


async def test_a_connection_closed_as_the_request_goes_is_retried_once(scripted: ScriptedUpstream) -> None:
    client = UpstreamClient(scripted.url, ClientSettings())
    try:
        assert (await client.request("GET", "/stale", timeout_s=5)).status == 200
        # The server reads the next request on that connection and closes it unanswered.
        assert (await client.request("GET", "/stale", timeout_s=5)).status == 200
        assert scripted.requests["/stale"] == 3 and scripted.connections == 2
    finally:
        await client.close()


async def test_a_connection_lost_mid_answer_is_not_retried(scripted: ScriptedUpstream) -> None:
    client = UpstreamClient(scripted.url, ClientSettings())
    try:
        assert (await client.request("GET", "/plain", timeout_s=5)).status == 200  # pooled from now on
        with pytest.raises(ConnectionLost) as lost:
            await client.request("GET", "/partial", timeout_s=5)
        assert lost.value.received > 0 and scripted.requests["/partial"] == 1
        assert client.open_connections == 0
    finally:
        await client.close()


async def test_a_connection_the_upstream_closed_while_idle_is_not_used(scripted: ScriptedUpstream) -> None:
    client = UpstreamClient(scripted.url, ClientSettings())
    try:
        assert (await client.request("GET", "/close-after", timeout_s=5)).status == 200
        deadline = time.monotonic() + 5
        while client.idle_connections and time.monotonic() < deadline:  # until its EOF is read
            await asyncio.sleep(0.01)
        assert client.idle_connections == 0
        assert (await client.request("GET", "/plain", timeout_s=5)).status == 200
        assert scripted.connections == 2 and sum(scripted.requests.values()) == 2  # nothing sent into the dead one
    finally:
        await client.close()


@pytest.mark.parametrize(("path", "message"), [
    ("/huge", "body of 33554432 bytes is over the 64 KiB"),
    ("/endless", "body runs past the 64 KiB"),
    ("/hugehead", "headers run past 16 KiB"),
    ("/malformed", "not valid HTTP/1.1"),
])
async def test_bad_answers_fail_within_the_bounds(scripted: ScriptedUpstream, path: str, message: str) -> None:
    client = UpstreamClient(scripted.url, ClientSettings(max_head_bytes=16 * 1024, max_body_bytes=64 * 1024))
    try:
        with pytest.raises(BadAnswer, match=message):
            await client.request("GET", path, timeout_s=5)
        assert client.open_connections == 0
        assert (await client.request("GET", "/plain", timeout_s=5)).status == 200
    finally:
        await client.close()


async def test_chunked_interim_and_until_close_answers_are_read_whole(scripted: ScriptedUpstream) -> None:
    client = UpstreamClient(scripted.url, ClientSettings())
    try:
        assert (await client.request("GET", "/chunked", timeout_s=5)).body == b"hello world"
        assert json.loads((await client.request("GET", "/continue", timeout_s=5)).body) == {"ok": True}
        assert (await client.request("GET", "/until-close", timeout_s=5)).body == b"all of it"
        assert scripted.connections == 1  # chunked and 100 Continue kept it open; until-close ended it
    finally:
        await client.close()


async def test_waiting_for_a_connection_ends_at_the_deadline(scripted: ScriptedUpstream) -> None:
    client = UpstreamClient(scripted.url, ClientSettings(connections=1))
    try:
        hung = asyncio.create_task(client.request("GET", "/hang", timeout_s=5))
        while not scripted.requests["/hang"]:
            await asyncio.sleep(0.005)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.request("GET", "/plain", timeout_s=0.05)
        assert time.monotonic() - started < 0.5 and scripted.connections == 1
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        assert client.open_connections == 0  # the cancelled exchange gave its connection up
        assert (await client.request("GET", "/plain", timeout_s=5)).status == 200
    finally:
        await client.close()


async def test_an_upstream_that_is_not_there_fails_to_connect() -> None:
    closed = ScriptedUpstream()
    await closed.start()
    url = closed.url
    await closed.stop()  # nothing listens on its port now
    client = UpstreamClient(url, ClientSettings())
    with pytest.raises(ConnectFailed, match="ConnectionRefusedError"):
        await client.request("GET", "/readyz", timeout_s=5)
    assert client.open_connections == 0
    await client.close()
