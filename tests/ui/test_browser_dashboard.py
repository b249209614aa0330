"""The dashboard in a real browser: its charts fill from the event store and keep refreshing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page

from batchserve.loadtest.samples import SAMPLE_IMAGES as IMAGES
from batchserve.loadtest.server_process import ServerProcess
from tests.ui.browser import PageWatch, save_docs_screenshot, screenshot

pytestmark = pytest.mark.browser

CHART_STATE = """() => {
    const get = (id) => Chart.getChart(id);
    const sum = (xs) => xs.reduce((a, b) => a + (b || 0), 0);
    const traffic = get('traffic-chart'), latency = get('latency-chart');
    const batches = get('batch-chart'), classes = get('classes-chart');
    return {
        points: traffic.data.labels.length,
        requests: sum(traffic.data.datasets[0].data),
        errors: sum(traffic.data.datasets[1].data),
        p50: latency.data.datasets[0].data.filter((v) => v !== null),
        p99: latency.data.datasets[1].data.filter((v) => v !== null),
        batchSizes: batches.data.labels.length,
        batchedImages: sum(batches.data.datasets[0].data),
        classes: classes.data.labels,
        tileRequests: Number(document.getElementById('tile-requests').textContent),
    };
}"""


def classify(server: ServerProcess, *names: str) -> dict[str, Any]:
    files = [("image", (n, (IMAGES / n).read_bytes(), "image/jpeg")) for n in names]
    response = httpx.post(f"{server.url}/v1/classify", files=files, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_charts_fill_from_the_event_store(
    page: Page, watch: PageWatch, ui_server: ServerProcess, tmp_path: Path
) -> None:
    answer = classify(ui_server, "chelsea.jpg", "coffee.jpg")
    cat = answer["results"][0]["predictions"][0]["label"]
    bad = httpx.post(f"{ui_server.url}/v1/classify", content=b"not an image", headers={"Content-Type": "image/png"})
    assert bad.status_code == 400

    page.goto("/dashboard")
    # The writer flushes every 100 ms and the page polls every 5 s: wait for the data, bounded.
    page.wait_for_function(
        """() => {
            const t = Chart.getChart('traffic-chart'), c = Chart.getChart('classes-chart');
            return t && c && t.data.datasets[1].data.some((v) => v > 0) && c.data.labels.length > 0;
        }""",
        timeout=30_000,
    )
    state = page.evaluate(CHART_STATE)
    assert state["points"] >= 60  # one point per minute of the last hour, quiet minutes included
    assert state["requests"] >= 3 and state["errors"] >= 1
    assert (
        state["p50"] and state["p99"] and all(p99 >= p50 for p50, p99 in zip(state["p50"], state["p99"], strict=True))
    )
    assert state["batchSizes"] > 0 and state["batchedImages"] >= 2
    assert cat in state["classes"]
    assert state["tileRequests"] >= 3  # from a second query (group_by=model) over the same window
    page.wait_for_load_state("networkidle")
    screenshot(page, tmp_path, "dashboard")
    save_docs_screenshot(page, "dashboard", full_page=False)

    before = state["requests"]
    classify(ui_server, "rocket.jpg")
    page.wait_for_function(
        f"() => Number(document.getElementById('tile-requests').textContent) > {before}", timeout=30_000
    )
    watch.assert_clean()


def test_window_selector_switches_to_hourly_buckets(page: Page, watch: PageWatch, ui_server: ServerProcess) -> None:
    classify(ui_server, "coffee.jpg")
    page.goto("/dashboard")
    page.wait_for_function("() => document.getElementById('dashboard').dataset.updatedAt")
    first = page.locator("#dashboard").get_attribute("data-updated-at")
    with page.expect_response(lambda r: "group_by=hour" in r.url and r.status == 200):
        page.select_option("#window-select", "1440")
    page.wait_for_function(f"() => document.getElementById('dashboard').dataset.updatedAt !== '{first}'")
    assert page.evaluate("() => Chart.getChart('traffic-chart').data.labels.length") in (24, 25)
    assert page.locator(".bucket-unit").first.inner_text() == "hour"
    watch.assert_clean()


def test_timeline_puts_buckets_in_place_and_fills_gaps(page: Page, watch: PageWatch) -> None:
    page.goto("/dashboard")
    result = page.evaluate(
        """async () => {
            const src = [...document.querySelectorAll('script[type=module]')].pop().src;
            const { timeline, bucketTime } = await import(src);
            const start = Date.UTC(2024, 0, 1, 12, 0, 0);
            const groups = [
                { key: '2024-01-01T12:02:00+00:00', requests: 4 },
                { key: '2024-01-01T12:04:00Z', requests: 2 },
                { key: '2024-01-01T11:00:00+00:00', requests: 9 },   // before the window: ignored
            ];
            const rows = timeline(groups, start, start + 5 * 60000, 60000);
            return {
                requests: rows.map((r) => (r.group ? r.group.requests : 0)),
                noZone: bucketTime('2024-01-01T12:00:00') === start,
                offset: bucketTime('2024-01-01T13:00:00+01:00') === start,
            };
        }"""
    )
    assert result == {"requests": [0, 0, 4, 0, 2, 0], "noZone": True, "offset": True}
    watch.assert_clean()
