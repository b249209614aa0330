"""Events end to end: a real server, a real PostgreSQL, and a proxy between them that we cut.

No request may fail while the database is away, and every served request must end up as
exactly one fact row once it is back — also when the server is SIGKILLed while events wait in
its journal.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import signal
import time
import urllib.parse
from pathlib import Path

import asyncpg
import httpx
import pytest
from PIL import Image

from batchserve.loadtest.server_process import ServerProcess
from tests.events.conftest import pg_url  # noqa: F401  (fixture)
from tests.events.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (i % 256, (i * 7) % 256, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def through(url: str, port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{userinfo}127.0.0.1:{port}"))


async def fact_rows(url: str) -> tuple[int, int]:
    """(rows, distinct event ids) in the fact table."""
    con = await asyncpg.connect(url, timeout=10)
    try:
        row = await con.fetchrow("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM api_event_fact")
        return row["n"], row["d"]
    finally:
        await con.close()


async def eventually(check, timeout: float = 60.0, what: str = "condition") -> None:
    """Wait for a condition (a plain or async predicate); the timeout only bounds a broken run."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def journal_lines(journal: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in journal.glob("*.jsonl")) if journal.exists() else 0


def proxy_for(url: str) -> TcpProxy:
    parts = urllib.parse.urlsplit(url)
    return TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)


def start_server(cwd: Path, database_url: str) -> ServerProcess:
    return ServerProcess("--models", "tiny", "--database-url", database_url, "--events-flush-interval-ms", "50",
                         cwd=cwd)


async def test_database_outage_under_load_loses_and_duplicates_nothing(pg_url: str, built_models, tmp_path) -> None:  # noqa: F811
    proxy = proxy_for(pg_url)
    port = await proxy.start()
    server = await asyncio.to_thread(start_server(tmp_path, through(pg_url, port)).start)
    total, concurrency = 240, 12
    statuses: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(total):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    statuses.append((await client.post("/v1/classify", content=png(i))).status_code)

            workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
            await eventually(lambda: (len(statuses) >= total // 4), what="a quarter of the load")
            await proxy.cut()
            served_at_cut = len(statuses)
            cut_at = time.monotonic()
            # Keep the database away for a few seconds and a good share of the requests.
            await eventually(lambda: (len(statuses) >= served_at_cut + total // 3 and time.monotonic() - cut_at > 2),
                             what="requests served during the outage")
            await proxy.restore()
            await asyncio.gather(*workers)
        assert statuses == [200] * total
        await eventually(lambda: _rows_equal(pg_url, total), what=f"{total} fact rows")
        assert await fact_rows(pg_url) == (total, total)
    finally:
        server.stop()
        await proxy.close()


async def _rows_equal(url: str, expected: int) -> bool:
    rows, _ = await fact_rows(url)
    assert rows <= expected, f"{rows} rows for {expected} requests: duplicates"
    return rows == expected


async def test_journal_survives_sigkill_and_is_replayed_on_restart(pg_url: str, built_models, tmp_path) -> None:  # noqa: F811
    proxy = proxy_for(pg_url)
    port = await proxy.start()
    database_url = through(pg_url, port)
    server = await asyncio.to_thread(start_server(tmp_path, database_url).start)
    try:
        await proxy.cut()
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            statuses = [(await client.post("/v1/classify", content=png(i))).status_code for i in range(40)]
        assert statuses == [200] * 40
        journal = tmp_path / "batchserve-journal"
        await eventually(lambda: (journal_lines(journal) >= 40), what="40 events in the journal")
        server.signal(signal.SIGKILL)
        server.wait(10)
        await proxy.restore()
        restarted = await asyncio.to_thread(start_server(tmp_path, database_url).start)
        try:
            await eventually(lambda: _rows_equal(pg_url, 40), what="the journal to be replayed")
            assert await fact_rows(pg_url) == (40, 40)
        finally:
            restarted.stop()
    finally:
        server.stop()
        await proxy.close()
