"""Event losses are visible on /metrics: a counter per reason, read from the writer's own ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.events.event_helpers import make_event, wait_until
from tests.server.conftest import AppFactory


async def test_an_event_the_store_refuses_is_counted_on_metrics(make_client: AppFactory, tmp_path: Path) -> None:
    async with make_client(events=True, events_flush_interval_ms=10) as client:
        writer = client.app_state.serving.writer  # type: ignore[attr-defined]
        con = sqlite3.connect(tmp_path / "events.sqlite3")
        try:
            con.execute(
                "CREATE TRIGGER no_negative_latency BEFORE INSERT ON api_event_fact WHEN NEW.latency_ms < 0 "
                "BEGIN SELECT RAISE(ABORT, 'no_negative_latency'); END"
            )
        finally:
            con.close()
        writer.put(make_event(1, latency_ms=-5.0))
        writer.put(make_event(2))
        await wait_until(lambda: writer.stats.written_total == 1 and writer.stats.lost_total == 1, what="settled")
        body = (await client.get("/metrics")).text
    assert 'batchserve_events_lost_total{reason="rejected"} 1.0' in body
    assert 'batchserve_events_lost_total{reason="overflow"} 0.0' in body
    assert "batchserve_events_dropped_total 0.0" in body  # a copy was kept in dead-letter/
    assert len(list((tmp_path / "journal" / "dead-letter").glob("*.jsonl"))) == 1
