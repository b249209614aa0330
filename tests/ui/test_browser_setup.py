"""Where the browser tests run: a missing chromium fails CI and skips elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ui import browser


def test_missing_chromium_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-chromium is missing"):
        browser.chromium_or_skip()


def test_missing_chromium_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium is missing"):
        browser.chromium_or_skip()


def test_docs_screenshots_are_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(browser.DOCS_ENV, raising=False)
    # Without the variable nothing is written, so the page is never even touched.
    assert browser.save_docs_screenshot(page=None, name="never") is None  # type: ignore[arg-type]
