"""``batchserve db upgrade`` and ``batchserve stats``, through a local argparse parser."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from batchserve.events.analytics import StatsQuery, query_stats
from batchserve.events.commands import register
from batchserve.events.config import EventsConfig
from batchserve.events.migrate import latest_version
from batchserve.events.store import open_store
from tests.events.event_helpers import closed_port, make_event


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batchserve")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = parse(*argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BATCHSERVE_DATABASE_URL", "BATCHSERVE_EVENTS_PATH", "BATCHSERVE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default SQLite file lands here, not in the checkout


def _load(config: EventsConfig, n: int = 30) -> None:
    async def load() -> None:
        store = open_store(config)
        await store.open()
        await store.write([make_event(i) for i in range(n)])
        await store.close()

    asyncio.run(load())


def test_db_upgrade_creates_the_sqlite_schema(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "sub" / "events.sqlite3"
    for _ in range(2):  # idempotent
        code, out, _ = run(capsys, "db", "upgrade", "--events-path", str(path))
        assert code == 0
        assert f"version {latest_version()}" in out and str(path) in out
    assert path.exists()


def test_db_upgrade_uses_the_default_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, _ = run(capsys, "db", "upgrade")
    assert code == 0
    assert (tmp_path / "batchserve-events.sqlite3").exists()


def test_db_upgrade_postgres_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, pg_url: str
) -> None:
    monkeypatch.setenv("BATCHSERVE_DATABASE_URL", pg_url)
    code, out, _ = run(capsys, "db", "upgrade")
    assert code == 0 and out.startswith(f"event schema at version {latest_version()} (postgres ")


def test_events_path_flag_beats_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BATCHSERVE_DATABASE_URL", f"postgresql://nobody@127.0.0.1:{closed_port()}/x")
    code, out, _ = run(capsys, "db", "upgrade", "--events-path", str(tmp_path / "e.sqlite3"))
    assert code == 0 and "sqlite" in out


def test_db_upgrade_reports_an_unreachable_database(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "db", "upgrade", "--database-url", f"postgresql://u:pw@127.0.0.1:{closed_port()}/x")
    assert code == 1
    assert "error" in err and ":pw@" not in err


def test_stats_json_is_the_analytics_answer(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = EventsConfig(events_path=tmp_path / "e.sqlite3")
    _load(config)
    code, out, _ = run(capsys, "stats", "--events-path", str(config.events_path), "--group-by", "user", "--json")
    assert code == 0

    async def expected() -> dict[str, Any]:
        store = open_store(config)
        await store.open(migrate=False)
        try:
            return await query_stats(store, StatsQuery(group_by="user"))
        finally:
            await store.close()

    assert json.loads(out) == asyncio.run(expected())


def test_stats_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = EventsConfig(events_path=tmp_path / "e.sqlite3")
    _load(config)
    code, out, _ = run(
        capsys, "stats", "--events-path", str(config.events_path), "--group-by", "model", "--from", "2024-05-01T00:00Z"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "group by model, from 2024-05-01T00:00:00+00:00"
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == ["model", "requests", "errors", "p50", "ms", "p95", "ms", "p99", "ms", "mean", "batch"]
    tiny = next(line for line in lines if line.startswith("tiny"))
    assert tiny.split()[1:3] == ["30", "0"]
    assert "batch size  images" in out and "top classes" in out


def test_stats_on_a_missing_file_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sqlite3"
    code, _, err = run(capsys, "stats", "--events-path", str(missing))
    assert code == 1 and "no events database" in err
    assert not missing.exists()


def test_stats_on_postgres(capsys: pytest.CaptureFixture[str], pg_url: str) -> None:
    _load(EventsConfig(database_url=pg_url), n=12)
    code, out, _ = run(capsys, "stats", "--database-url", pg_url, "--group-by", "day", "--json")
    assert code == 0
    (group,) = json.loads(out)["groups"]
    assert group["key"] == "2024-05-01T00:00:00+00:00" and group["requests"] == 12


class _StatsServer:
    """A stand-in for a running batchserve that answers /v1/stats with canned responses."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append((self.path, self.headers.get("X-API-Key")))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _StatsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


ANSWER = {
    "groups": [
        {
            "key": "alpha",
            "requests": 3,
            "errors": 1,
            "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 2.0},
            "mean_batch_size": 1.5,
        }
    ],
    "batch_size_histogram": {"1": 2},
    "top_classes": [{"class_id": 1, "label": "cat", "count": 2}],
}


@pytest.fixture
def stats_server() -> Iterator[_StatsServer]:
    with _StatsServer(200, ANSWER) as server:
        yield server


def test_stats_from_a_server(capsys: pytest.CaptureFixture[str], stats_server: _StatsServer) -> None:
    code, out, _ = run(
        capsys,
        "stats",
        "--url",
        stats_server.url + "/",
        "--group-by",
        "model",
        "--from",
        "2024-05-01T10:00:00+02:00",
        "--user",
        "alice",
        "--api-key",
        "k-123",
        "--json",
    )
    assert code == 0 and json.loads(out) == ANSWER
    ((path, api_key),) = stats_server.requests
    url = urlsplit(path)
    assert url.path == "/v1/stats"
    assert parse_qs(url.query) == {"group_by": ["model"], "from": ["2024-05-01T08:00:00+00:00"], "user": ["alice"]}
    assert api_key == "k-123"


def test_stats_server_error_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    body = {"error": {"code": "invalid_parameter", "message": "group_by must be one of minute, hour"}}
    with _StatsServer(422, body) as server:
        code, _, err = run(capsys, "stats", "--url", server.url)
    assert code == 1 and "422" in err and "group_by must be one of" in err


def test_stats_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "stats", "--url", f"http://127.0.0.1:{closed_port()}")
    assert code == 1 and "cannot reach" in err


@pytest.mark.parametrize(
    "argv",
    [
        ("stats", "--from", "yesterday"),
        ("stats", "--group-by", "week"),
        ("stats", "--url", "http://x", "--database-url", "postgresql://y"),
        ("db",),
    ],
)
def test_bad_arguments_exit_with_usage(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2
