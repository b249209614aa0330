"""Fixtures for the UI's browser tests: one real server, one chromium per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from batchserve.loadtest.server_process import ServerProcess
from tests.ui.browser import CHROMIUM_ARGS, LAPTOP, PageWatch, chromium_or_skip


@pytest.fixture(scope="session")
def ui_server(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real EfficientNet-Lite0 with SQLite events flushed every 100 ms, so the dashboard sees
    requests quickly. Separate from the shared read-only server: these tests add events."""
    cwd = tmp_path_factory.mktemp("ui-server")
    server = ServerProcess(
        "--model-repo", str(built_models), "--models", "efficientnet_lite0",
        "--events-path", str(cwd / "events.sqlite3"), "--journal-dir", str(cwd / "journal"),
        "--events-flush-interval-ms", "100", cwd=cwd,
    )
    with server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope: Playwright's sync API runs its own event loop, kept out of the async tests' way.
    executable = chromium_or_skip()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, ui_server: ServerProcess) -> Iterator[Page]:
    context = browser.new_context(viewport=LAPTOP, base_url=ui_server.url, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def watch(page: Page) -> PageWatch:
    return PageWatch(page)
