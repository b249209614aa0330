"""The database URL the Cloud Run profile puts in Secret Manager, tried for real: Cloud Run mounts
the Cloud SQL connection as a unix socket in /cloudsql/PROJECT:REGION:INSTANCE/, and the URL names
that folder in `host`. Here the folder (colons and all) holds a link to the local PostgreSQL's
socket, and the event store opens, migrates, writes and reads through it."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from batchserve.deploy.gcp.setup import socket_url
from batchserve.events.config import EventsConfig, redact_url
from batchserve.events.model import Event
from batchserve.events.store import open_store

LOCAL_SOCKETS = Path("/var/run/postgresql")
CONNECTION = "batchserve-prod:us-east4:events-db"
TCP_URL = os.environ.get("BATCHSERVE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.skipif(not (LOCAL_SOCKETS / ".s.PGSQL.5432").exists(),
                                reason="no local PostgreSQL socket in /var/run/postgresql")


@pytest.fixture
def cloudsql_folder() -> Iterator[Path]:
    # Short, under /tmp: a unix socket path is limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    folder = root / "cloudsql" / CONNECTION
    folder.mkdir(parents=True)
    (folder / ".s.PGSQL.5432").symlink_to(LOCAL_SOCKETS / ".s.PGSQL.5432")
    try:
        yield folder
    finally:
        shutil.rmtree(root)


def url_for(folder: Path, schema: str | None = None) -> str:
    """The profile's URL form with the socket folder moved from /cloudsql/ to this test's folder."""
    url = socket_url(CONNECTION, "s3cr3t").replace("/batchserve?", "/test?").replace("batchserve:", "postgres:", 1)
    url = url.replace(f"host=/cloudsql/{CONNECTION}", f"host={folder}")
    return url + (f"&search_path={schema}" if schema else "")


async def _execute(sql: str) -> None:
    con = await asyncpg.connect(TCP_URL, timeout=10)
    try:
        await con.execute(sql)
    finally:
        await con.close()


def test_asyncpg_connects_through_the_socket_folder(cloudsql_folder: Path) -> None:
    url = url_for(cloudsql_folder)
    assert url.startswith("postgresql://postgres:s3cr3t@/test?host=/tmp/")
    assert url.endswith(f"/cloudsql/{CONNECTION}")

    async def check() -> tuple[object, str]:
        con = await asyncpg.connect(url, timeout=10)
        try:
            # No server address: the session came over a unix socket, not TCP.
            return await con.fetchval("SELECT inet_server_addr()"), await con.fetchval("SELECT current_database()")
        finally:
            await con.close()

    assert asyncio.run(check()) == (None, "test")
    # What logs and errors show of it: no password.
    assert redact_url(url) == url.replace("s3cr3t", "***")


def test_the_event_store_migrates_writes_and_reads_through_it(cloudsql_folder: Path) -> None:
    schema = f"cloudsql_test_{uuid.uuid4().hex[:12]}"
    config = EventsConfig(database_url=url_for(cloudsql_folder, schema), journal_dir=cloudsql_folder / "journal")
    event = Event(event_id=uuid.uuid4().hex, request_id="req-cloudsql", ts=datetime.now(UTC), route="v1",
                  model="tiny", model_version=1, class_id=1, class_label="one", score=0.9, status=200)

    async def round_trip() -> list[tuple[object, ...]]:
        await _execute(f'CREATE SCHEMA "{schema}"')
        store = open_store(config)
        assert store.kind == "postgres"
        try:
            assert await store.open() >= 1  # migrations ran over the socket
            assert await store.write([event]) == 1
            return await store.fetch("SELECT count(*), current_schema() FROM api_event_fact")
        finally:
            await store.close()
            await _execute(f'DROP SCHEMA "{schema}" CASCADE')

    assert asyncio.run(round_trip()) == [(1, schema)]
