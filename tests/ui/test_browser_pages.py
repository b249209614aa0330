"""Home, about and every page at phone width, in a real browser, with no errors of any kind."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page

from batchserve import __version__
from tests.ui.browser import PHONE, PageWatch, no_horizontal_overflow, screenshot

pytestmark = pytest.mark.browser

PAGES = {"home": "/", "about": "/about", "upload": "/upload", "dashboard": "/dashboard"}


def test_home_lists_the_loaded_model(page: Page, watch: PageWatch, tmp_path: Path) -> None:
    page.goto("/")
    card = page.locator(".model-card[data-model='efficientnet_lite0']")
    assert card.count() == 1
    text = card.inner_text()
    assert "CPUExecutionProvider" in text and "Max batch size" in text
    assert page.locator(".pill", has_text="ready").count() == 1
    for href in ("/upload", "/dashboard", "/schema"):
        assert page.locator(f"main a[href='{href}']").count() >= 1
    page.wait_for_load_state("networkidle")
    screenshot(page, tmp_path, "home")
    watch.assert_clean()


def test_about_shows_version_uptime_and_the_diagram(page: Page, watch: PageWatch, tmp_path: Path) -> None:
    page.goto("/about")
    assert page.locator("#server-version").inner_text() == __version__
    assert page.locator("#uptime").inner_text().strip()
    diagram = page.locator("figure.diagram svg")
    assert diagram.is_visible()
    box = diagram.bounding_box()
    assert box is not None and box["width"] > 500 and box["height"] > 150
    page.wait_for_load_state("networkidle")
    screenshot(page, tmp_path, "about")
    watch.assert_clean()


def test_navigation_links_reach_every_page(page: Page, watch: PageWatch) -> None:
    page.goto("/")
    for label, path in (("Classify", "/upload"), ("Dashboard", "/dashboard"), ("About", "/about"), ("Home", "/")):
        page.get_by_role("navigation", name="Main").get_by_role("link", name=label, exact=True).click()
        page.wait_for_url(f"**{path}")
        assert page.locator("nav a[aria-current='page']").inner_text() == label
    watch.assert_clean()


@pytest.mark.parametrize("name", list(PAGES))
def test_page_fits_a_phone_screen(page: Page, watch: PageWatch, tmp_path: Path, name: str) -> None:
    page.set_viewport_size(PHONE)
    page.goto(PAGES[name])
    page.wait_for_load_state("networkidle")
    assert no_horizontal_overflow(page), f"{PAGES[name]} scrolls sideways at {PHONE['width']} px"
    screenshot(page, tmp_path, f"{name}-phone")
    watch.assert_clean()
