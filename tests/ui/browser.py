"""Driving Debian's chromium through Playwright for the UI tests.

The pages run under a strict Content-Security-Policy (no eval), so waits are written as
arrow functions (`"() => ..."`): Playwright evaluates those without `eval`, while a bare
expression string would be refused by the page's policy.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import ConsoleMessage, Page, Request, Response

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
LAPTOP = {"width": 1000, "height": 760}
PHONE = {"width": 375, "height": 740}
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
DOCS_ENV = "BATCHSERVE_DOCS_SCREENSHOTS"
DOCS_MAX_BYTES = 200_000


def chromium_or_skip() -> Path:
    """The browser binary; its absence fails the run in CI (it must be installed there) and skips elsewhere."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"{CHROMIUM} is missing (scripts/ensure-system-packages.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class PageWatch:
    """Collects what would mean a broken page: script errors, console errors (CSP violations
    included), failed requests and HTTP errors, except the answers a test expects."""

    page: Page
    allowed: list[tuple[re.Pattern[str], int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._response)
        self.page.on("request", lambda req: self.requests.append(f"{req.method} {req.url}"))

    def allow(self, url_pattern: str, status: int) -> None:
        """An error answer the test provokes on purpose (e.g. a 400 for a bad file)."""
        self.allowed.append((re.compile(url_pattern), status))

    def _is_allowed(self, url: str, status: int | None) -> bool:
        return any(p.search(url) and (status is None or status == s) for p, s in self.allowed)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        url = msg.location.get("url", "") if msg.location else ""
        # Chromium also logs every error answer as "Failed to load resource"; expected ones are fine.
        if msg.text.startswith("Failed to load resource") and self._is_allowed(url, None):
            return
        self.problems.append(f"console error: {msg.text} ({url})")

    def _failed(self, request: Request) -> None:
        self.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400 and not self._is_allowed(response.url, response.status):
            self.problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    def assert_clean(self) -> None:
        assert not self.problems, "\n".join(self.problems)


def screenshot(page: Page, folder: Path, name: str, *, full_page: bool = True) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def save_docs_screenshot(page: Page, name: str, *, full_page: bool = True) -> Path | None:
    """Refreshes docs/images/<name>.png when BATCHSERVE_DOCS_SCREENSHOTS=1 (a deliberate act,
    so ordinary test runs leave the tree untouched). Stored as a 256-colour PNG to stay small."""
    if os.environ.get(DOCS_ENV) != "1":
        return None
    raw = page.screenshot(full_page=full_page)
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    path = DOCS_IMAGES / f"{name}.png"
    small.save(path, "PNG", optimize=True)
    assert path.stat().st_size < DOCS_MAX_BYTES, f"{path} is {path.stat().st_size} bytes"
    return path


def wait_for_models(page: Page, timeout_ms: float = 15_000) -> None:
    """The upload page's model list is filled from /v1/models after load."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('#model-select option')].some(o => o.text.includes('·'))",
        timeout=timeout_ms,
    )


def no_horizontal_overflow(page: Page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
