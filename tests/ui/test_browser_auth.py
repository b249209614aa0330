"""The pages under `--auth required`, in real chromium: they ask for a key, keep it for the tab's
session only, send it on their API calls, and show the server's own sentence when it is refused."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from batchserve.loadtest.samples import SAMPLE_IMAGES as IMAGES
from batchserve.loadtest.server_process import ServerProcess
from tests.server.keyring import MadeKey
from tests.ui.browser import LAPTOP, PageWatch, wait_for_models

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
LABELS = (ROOT / "model_repo" / "models" / "efficientnet_lite0" / "labels.txt").read_text().splitlines()
CATS = {LABELS[i] for i in tomllib.loads((IMAGES / "manifest.toml").read_text())["chelsea.jpg"]["top1_any_of"]}
STORAGE_KEY = "batchserve.apiKey"


@dataclass
class LockedUi:
    server: ServerProcess
    classify: MadeKey  # classify scope only
    viewer: MadeKey  # classify and stats


@pytest.fixture(scope="module")
def locked_ui(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockedUi]:
    cwd = tmp_path_factory.mktemp("locked-ui")
    db = cwd / "events.sqlite3"
    # Through the command, as an operator would (Playwright's own loop runs in this thread).
    classify, viewer = (create_key(db, name, scopes) for name, scopes in (("visitor", "classify"),
                                                                          ("viewer", "classify,stats")))
    server = ServerProcess("--model-repo", str(built_models), "--models", "efficientnet_lite0", "--auth", "required",
                           "--events-path", str(db), "--journal-dir", str(cwd / "journal"),
                           "--events-flush-interval-ms", "100", cwd=cwd)
    with server:
        yield LockedUi(server, classify, viewer)


def create_key(db: Path, name: str, scopes: str) -> MadeKey:
    done = subprocess.run([sys.executable, "-m", "batchserve", "keys", "create", name, "--scopes", scopes,
                           "--events-path", str(db)], capture_output=True, text=True, timeout=120, check=True)
    return MadeKey(name, done.stdout.strip())


@pytest.fixture
def context(browser: Browser, locked_ui: LockedUi) -> Iterator[BrowserContext]:
    context = browser.new_context(viewport=LAPTOP, base_url=locked_ui.server.url, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(30_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def watch(page: Page) -> PageWatch:
    return PageWatch(page)


def enter_key(page: Page, key: str) -> None:
    page.locator("#auth-panel").wait_for(state="visible")
    page.fill("#auth-key", key)
    page.click("#auth-form button[type=submit]")


def test_the_upload_page_asks_for_a_key_then_classifies(page: Page, watch: PageWatch, locked_ui: LockedUi) -> None:
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))) if "/v1/" in r.url else None)
    page.goto("/upload")
    page.locator("#auth-panel").wait_for(state="visible")
    assert "needs an API key" in page.locator("#auth-message").inner_text()
    assert page.evaluate("() => document.activeElement.id") == "auth-key"
    assert sent == []  # nothing is asked of the API before there is a key to ask with

    enter_key(page, locked_ui.classify.key)
    wait_for_models(page)
    assert page.locator("#auth-panel").is_hidden()
    page.set_input_files("#file-input", str(IMAGES / "chelsea.jpg"))
    card = page.locator("#results .result.done")
    card.wait_for()
    assert card.locator(".bar-label").first.inner_text() in CATS

    assert {header for _, header in sent} == {f"Bearer {locked_ui.classify.key}"}
    assert any("/v1/classify" in url for url, _ in sent)
    storage = page.evaluate("() => ({session: {...sessionStorage}, local: {...localStorage}, "
                            "cookies: document.cookie})")
    assert storage == {"session": {STORAGE_KEY: locked_ui.classify.key}, "local": {}, "cookies": ""}
    assert locked_ui.classify.key not in page.url
    assert page.locator("#auth-toggle").inner_text() == "API key ✓"
    watch.assert_clean()


def test_the_key_lasts_for_the_tab_only(context: BrowserContext, page: Page, locked_ui: LockedUi) -> None:
    page.goto("/upload")
    enter_key(page, locked_ui.classify.key)
    wait_for_models(page)
    page.goto("/about")  # another page of the same tab: still known
    assert page.evaluate(f"() => sessionStorage.getItem('{STORAGE_KEY}')") == locked_ui.classify.key
    page.goto("/upload")
    wait_for_models(page)
    assert page.locator("#auth-panel").is_hidden()

    other_tab = context.new_page()  # a new tab starts a new session: it asks again
    other_tab.goto("/upload")
    other_tab.locator("#auth-panel").wait_for(state="visible")
    assert other_tab.evaluate(f"() => sessionStorage.getItem('{STORAGE_KEY}')") is None

    page.click("#auth-toggle")
    page.click("#auth-forget")
    assert page.evaluate(f"() => sessionStorage.getItem('{STORAGE_KEY}')") is None
    page.locator("#auth-panel").wait_for(state="visible")
    assert "forgotten" in page.locator("#auth-message").inner_text()


def test_a_wrong_key_is_explained_and_a_right_one_recovers(page: Page, watch: PageWatch, locked_ui: LockedUi) -> None:
    watch.allow(r"/v1/models", 401)
    page.goto("/upload")
    enter_key(page, "bsk_this-key-does-not-exist")
    page.wait_for_function("() => document.getElementById('auth-message').textContent.includes('not valid')")
    assert page.locator("#auth-panel").is_visible()
    enter_key(page, locked_ui.classify.key)
    wait_for_models(page)
    watch.assert_clean()


def test_the_dashboard_needs_the_stats_scope(page: Page, watch: PageWatch, locked_ui: LockedUi) -> None:
    watch.allow(r"/v1/stats", 403)
    watch.allow(r"/metrics", 403)  # the drift panel reads the gauges with the same key
    page.goto("/dashboard")
    enter_key(page, locked_ui.classify.key)
    page.wait_for_function("() => document.getElementById('auth-message').textContent.includes(\"'stats' scope\")")
    assert "Could not load statistics" in page.locator("#dash-status").inner_text()
    assert page.locator("#auth-panel").is_visible()

    enter_key(page, locked_ui.viewer.key)
    page.wait_for_function("() => document.getElementById('dashboard').dataset.updatedAt")
    assert page.locator("#auth-panel").is_hidden()
    assert page.locator("#dash-status").inner_text() == ""
    watch.assert_clean()


def test_pages_without_api_calls_still_offer_the_key(page: Page, watch: PageWatch) -> None:
    page.goto("/")
    page.locator("#auth-panel").wait_for(state="visible")
    assert page.locator("#auth-toggle").is_visible()
    assert "Authorization: Bearer" in page.locator("main").inner_text()  # the curl example says how
    assert page.locator(".model-card").count() == 0  # model details need a key
    watch.assert_clean()
