"""The upload page in a real browser: real photos through the real model, bad files, keyboard."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page

from batchserve.loadtest.samples import SAMPLE_IMAGES as IMAGES
from batchserve.loadtest.server_process import ServerProcess
from tests.ui.browser import PHONE, PageWatch, no_horizontal_overflow, save_docs_screenshot, screenshot, wait_for_models

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
LABELS = (ROOT / "model_repo" / "models" / "efficientnet_lite0" / "labels.txt").read_text().splitlines()
MANIFEST = tomllib.loads((IMAGES / "manifest.toml").read_text())


def expected_labels(filename: str) -> tuple[set[str], int]:
    """(acceptable labels, how many of the top ranks may hold one) from the photo manifest."""
    entry = MANIFEST[filename]
    key = "top1_any_of" if "top1_any_of" in entry else "top2_any_of"
    return {LABELS[class_id] for class_id in entry[key]}, int(key[3])


def bar_labels(page: Page, card_index: int) -> list[str]:
    return page.locator("#results .result").nth(card_index).locator(".bar-label").all_inner_texts()


def test_chelsea_is_a_cat(page: Page, watch: PageWatch, tmp_path: Path) -> None:
    page.goto("/upload")
    wait_for_models(page)
    page.set_input_files("#file-input", str(IMAGES / "chelsea.jpg"))
    card = page.locator("#results .result.done")
    card.wait_for()
    labels = card.locator(".bar-label").all_inner_texts()
    cats, _ = expected_labels("chelsea.jpg")
    assert len(labels) == 5
    assert labels[0] in cats, f"top class {labels[0]!r} is not one of {cats}"
    percents = [float(t.rstrip("%")) for t in card.locator(".bar-value").all_inner_texts() if t != "<0.1%"]
    assert percents == sorted(percents, reverse=True) and 0 < percents[0] <= 100
    widths = card.locator(".bar-fill").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
    assert widths[0] > 0 and widths == sorted(widths, reverse=True)
    meta = card.locator(".meta").inner_text()
    assert "efficientnet_lite0 v1" in meta
    assert re.search(r"batch of \d+", meta) and re.search(r"\d+(\.\d)? ms", meta)
    assert card.get_attribute("aria-busy") == "false"
    assert page.locator("#status").inner_text().startswith(f"chelsea.jpg: {labels[0]}")
    screenshot(page, tmp_path, "upload")
    save_docs_screenshot(page, "upload")
    watch.assert_clean()


def test_several_photos_share_one_request(page: Page, watch: PageWatch) -> None:
    names = ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    page.goto("/upload")
    wait_for_models(page)
    page.set_input_files("#file-input", [str(IMAGES / n) for n in names])
    page.locator("#results .result.done").nth(2).wait_for()
    assert page.locator("#results .filename").all_inner_texts() == names
    for index, name in enumerate(names):
        wanted, ranks = expected_labels(name)
        top = bar_labels(page, index)[:ranks]
        assert wanted & set(top), f"{name}: {top} has none of {wanted}"
    posts = [r for r in watch.requests if r.startswith("POST ") and "/v1/classify" in r]
    assert len(posts) == 1, posts
    watch.assert_clean()


def test_a_text_file_named_jpg_shows_the_api_message(
    page: Page, watch: PageWatch, ui_server: ServerProcess, tmp_path: Path
) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("these are meeting notes, not a photo\n")
    api = httpx.post(f"{ui_server.url}/v1/classify", files=[("image", (fake.name, fake.read_bytes(), "image/jpeg"))])
    assert api.status_code == 400
    message = api.json()["results"][0]["error"]["message"]

    watch.allow(r"/v1/classify\?", 400)
    page.goto("/upload")
    wait_for_models(page)
    page.set_input_files("#file-input", str(fake))
    error = page.locator("#results .result.failed .error")
    error.wait_for()
    assert error.inner_text() == message
    assert error.get_attribute("data-code") == "invalid_image"
    assert page.locator("#results .result.failed .bars").is_hidden()
    assert message in page.locator("#status").inner_text()
    screenshot(page, tmp_path, "upload-error")
    watch.assert_clean()


def test_keyboard_only_upload_on_a_phone(page: Page, watch: PageWatch, tmp_path: Path) -> None:
    page.set_viewport_size(PHONE)
    page.goto("/upload")
    wait_for_models(page)
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement && document.activeElement.id") == "file-input":
            break
    else:
        pytest.fail("the file input cannot be reached with Tab")
    outline = page.locator("#dropzone").evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline != "none", "the drop zone shows no focus while its input has it"
    # The focused control is the native file input, so Enter/Space open the chooser by the browser's
    # own behaviour; headless Chromium opens that dialog only some of the time, so the test hands the
    # file to the focused input directly instead of depending on the dialog.
    page.locator("#file-input:focus").set_input_files(str(IMAGES / "coffee.jpg"))
    page.locator("#results .result.done").wait_for()
    assert bar_labels(page, 0)[0] == LABELS[967]
    assert no_horizontal_overflow(page)
    screenshot(page, tmp_path, "upload-phone")
    watch.assert_clean()


def test_chunking_respects_file_and_byte_limits(page: Page, watch: PageWatch) -> None:
    page.goto("/upload")
    sizes = page.evaluate(
        """async () => {
            const src = document.querySelector('script[type=module]').src;  // the page's own instance
            const { chunk } = await import(src);
            const item = (size) => ({ file: { size } });
            const shape = (chunks) => chunks.map((c) => c.map((i) => i.file.size));
            return {
                byCount: shape(chunk([1, 1, 1, 1, 1].map(item), 2, 1e9)),
                byBytes: shape(chunk([2000, 2000, 2000].map(item), 10, 7000)),
                oversized: shape(chunk([50000, 10].map(item), 10, 7000)),
            };
        }"""
    )
    assert sizes["byCount"] == [[1, 1], [1, 1], [1]]
    assert sizes["byBytes"] == [[2000, 2000], [2000]]  # each part also costs ~1 KiB of multipart headers
    assert sizes["oversized"] == [[50000], [10]]
    watch.assert_clean()
