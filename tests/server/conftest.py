"""In-process apps for API tests: the real Litestar app and lifespan, driven through ASGI."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from batchserve.server.app import create_app
from batchserve.server.options import build_config

AppFactory = Callable[..., Any]


@pytest.fixture
def make_client(built_models: Path, tmp_path: Path) -> AppFactory:
    """`async with make_client(**config) as client` — an app with the tiny model unless told otherwise."""

    @asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings: dict[str, Any] = {
            "model_repo": built_models,
            "models": ("tiny",),
            "events_path": tmp_path / "events.sqlite3",
            "journal_dir": tmp_path / "journal",
            "events": False,
        }
        settings.update(overrides)
        app = create_app(build_config(settings))
        # The app's lifespan and the client share this test's event loop, so concurrent requests
        # really overlap (Litestar's AsyncTestClient runs the app in a thread, one call at a time).
        async with app.lifespan():
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
                client.app_state = app.state["app_state"]  # type: ignore[attr-defined]
                yield client

    return factory


def jpeg_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(color: tuple[int, int, int] = (10, 120, 240), size: tuple[int, int] = (40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()
