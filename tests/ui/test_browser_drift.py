"""The dashboard's drift panel in a real browser: it reads /metrics and shows a skewed class mix."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page

from batchserve.loadtest.server_process import ServerProcess
from tests.ui.browser import LAPTOP, PageWatch

pytestmark = pytest.mark.browser

COLORS = [(25 * i, 100, 200 - 20 * i) for i in range(10)]


@pytest.fixture(scope="module")
def drift_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The simulated model with a 20-answer window and reference, and events off: the panel
    needs only /metrics."""
    server = ServerProcess("--simulate-model", "1+0", "--no-events", "--drift-window", "20",
                           "--drift-reference-size", "20", cwd=tmp_path_factory.mktemp("drift-server"))
    with server:
        yield server


@pytest.fixture
def drift_page(browser: Browser, drift_server: ServerProcess) -> Iterator[Page]:
    context = browser.new_context(viewport=LAPTOP, base_url=drift_server.url, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def classify(server: ServerProcess, colors: list[tuple[int, int, int]]) -> None:
    files = []
    for i, color in enumerate(colors):
        buffer = io.BytesIO()
        Image.new("RGB", (48, 32), color).save(buffer, "PNG")
        files.append(("image", (f"{i}.png", buffer.getvalue(), "image/png")))
    response = httpx.post(f"{server.url}/v1/classify", files=files, timeout=60)
    assert response.status_code == 200, response.text


PILL = "#drift-table tr[data-model='simulated'] .psi .pill"


def test_the_drift_panel_turns_red_when_the_class_mix_skews(drift_page: Page, drift_server: ServerProcess) -> None:
    page = drift_page
    watch = PageWatch(page)
    classify(drift_server, COLORS * 2)  # the reference: the first 20 answers, two of each class
    page.goto("/dashboard")
    page.wait_for_function(f"() => document.querySelector(\"{PILL}\")?.textContent.includes('stable')")
    row = page.locator("#drift-table tr[data-model='simulated'] td")
    assert page.locator(PILL).text_content() == "0.000 stable"
    assert row.nth(1).text_content() == "0.957"  # mean top-1 confidence of the simulated model
    assert row.nth(-1).text_content() == "20"  # reference answers
    assert "Events are off" in (page.locator("#dash-status").text_content() or "")

    classify(drift_server, [COLORS[0]] * 20)  # one class only: the window's mix leaves the reference's
    page.wait_for_function(f"() => document.querySelector(\"{PILL}\")?.textContent.includes('drift')")
    assert "psi-drift" in (page.locator(PILL).get_attribute("class") or "")
    chart = page.evaluate("""() => {
        const c = Chart.getChart('drift-chart');
        return c.data.datasets.map((d) => ({label: d.label, last: d.data[d.data.length - 1]}));
    }""")
    series = {d["label"]: d["last"] for d in chart}
    assert series["alert (0.2)"] == 0.2
    assert series["simulated"] > 0.2
    assert not watch.problems, watch.problems
