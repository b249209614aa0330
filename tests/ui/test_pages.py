"""The UI pages through the real app in-process: content, headers, links and CSP hygiene."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from batchserve import __version__
from batchserve.server.app import create_app
from batchserve.server.options import build_config
from batchserve.server.ui.pages import CONTENT_SECURITY_POLICY
from batchserve.server.ui.templating import STATIC_DIR

PAGES = ("/", "/about", "/upload", "/dashboard")
CHART_JS_VERSION = "4.6.1"


class PageParser(HTMLParser):
    """Collects what the CSP and link checks need: every tag with its attributes, and script bodies."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)

    def find(self, tag: str, **wanted: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in wanted.items())]


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


@pytest.fixture
def make_client(built_models: Path, tmp_path: Path) -> Callable[..., Any]:
    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[AsyncTestClient]:
        settings: dict[str, Any] = {
            "model_repo": built_models, "models": ("tiny",), "events": False,
            "events_path": tmp_path / "events.sqlite3", "journal_dir": tmp_path / "journal",
        }
        settings.update(overrides)
        async with AsyncTestClient(create_app(build_config(settings)), timeout=60) as client:
            yield client

    return factory


async def test_home_lists_loaded_models_with_batching_settings(make_client) -> None:
    async with make_client(max_batch_size=12, max_queue_delay_ms=3.5) as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = parse(response.text)
    cards = page.find("li", **{"class": "card model-card", "data-model": "tiny"})
    assert len(cards) == 1
    text = response.text
    assert "CPUExecutionProvider" in text
    assert "<dd>12</dd>" in text and "<dd>3.5 ms</dd>" in text
    assert ">ready<" in text and ">default<" in text
    hrefs = {a.get("href") for a in page.find("a")}
    assert {"/upload", "/dashboard", "/schema", "/about"} <= hrefs
    assert "http://testserver.local/v1/classify" in text  # the curl example names this server


async def test_about_shows_version_uptime_and_diagram(make_client) -> None:
    async with make_client() as client:
        response = await client.get("/about")
    assert response.status_code == 200
    page = parse(response.text)
    assert f'<dd id="server-version">{__version__}</dd>' in response.text
    assert page.find("dd", id="uptime")
    svg = page.find("svg", role="img")
    assert len(svg) == 1 and svg[0]["aria-labelledby"] == "diagram-title diagram-desc"
    assert "Dynamic batcher" in response.text


async def test_upload_page_is_an_accessible_file_form(make_client) -> None:
    async with make_client(max_images_per_request=7) as client:
        response = await client.get("/upload")
    page = parse(response.text)
    (file_input,) = page.find("input", type="file")
    assert file_input["id"] == "file-input" and file_input["name"] == "image"
    assert "multiple" in file_input and file_input["accept"] == "image/*"
    assert page.find("label", **{"for": "file-input"}), "the drop zone must be the input's label"
    assert page.find("p", id="status", role="status", **{"aria-live": "polite"})
    (form,) = page.find("form", id="upload-form")
    assert form["data-max-files"] == "7" and form["data-default-model"] == "tiny"


async def test_dashboard_has_four_charts_when_events_are_on(make_client) -> None:
    async with make_client(events=True, events_flush_interval_ms=50) as client:
        response = await client.get("/dashboard")
    page = parse(response.text)
    canvases = {a["id"] for a in page.find("canvas")}
    assert canvases == {"traffic-chart", "latency-chart", "batch-chart", "classes-chart"}
    (section,) = page.find("section", id="dashboard")
    assert section["data-events"] == "on" and "hidden" not in section
    scripts = [a["src"] for a in page.find("script")]
    assert any(src.startswith("/static/vendor/chart.js/chart.umd.js?v=") for src in scripts)


async def test_dashboard_says_when_events_are_off(make_client) -> None:
    async with make_client(events=False) as client:
        response = await client.get("/dashboard")
    (section,) = parse(response.text).find("section", id="dashboard")
    assert section["data-events"] == "off" and "hidden" in section
    assert "Events are off on this server" in response.text


@pytest.mark.parametrize("path", PAGES)
async def test_pages_are_csp_clean_and_their_assets_resolve(make_client, path: str) -> None:
    async with make_client(events=True) as client:
        response = await client.get(path)
        assert response.status_code == 200
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-request-id"]
        page = parse(response.text)
        assert page.inline_scripts == [], "inline scripts would be blocked by script-src 'self'"
        for tag, attrs in page.tags:
            handlers = [name for name in attrs if name.startswith("on")]
            assert not handlers, f"<{tag}> has inline event handlers {handlers}"
            assert "style" not in attrs, f"<{tag}> has a style attribute, blocked by style-src 'self'"
        assets = [a["src"] for a in page.find("script")] + [a["href"] for a in page.find("link")]
        assert assets
        for url in assets:
            asset = await client.get(url)
            assert asset.status_code == 200, url
            assert "max-age=86400" in asset.headers["cache-control"]


async def test_static_files_have_the_right_types(make_client) -> None:
    async with make_client() as client:
        js = await client.get("/static/js/upload.js")
        css = await client.get("/static/css/site.css")
        chart = await client.get("/static/vendor/chart.js/chart.umd.js")
    assert js.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
    assert css.headers["content-type"].startswith("text/css")
    assert f"Chart.js v{CHART_JS_VERSION}" in chart.text[:200]


def test_vendored_chart_library_carries_its_licence() -> None:
    vendor = STATIC_DIR / "vendor" / "chart.js"
    assert "The MIT License" in (vendor / "LICENSE.md").read_text()
    assert f"chart.js@{CHART_JS_VERSION}" in (vendor / "README.md").read_text()


async def test_unknown_ui_paths_answer_through_the_error_mapper(make_client) -> None:
    async with make_client() as client:
        missing_page = await client.get("/no-such-page")
        missing_asset = await client.get("/static/js/missing.js")
        wrong_method = await client.post("/upload")
    for response, status, code in ((missing_page, 404, "not_found"), (missing_asset, 404, "not_found"),
                                   (wrong_method, 405, "method_not_allowed")):
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
