"""Jinja2 templates and the static files they link to.

Static URLs carry a short hash of the file's content (`/static/js/upload.js?v=3f2a…`), so
browsers may cache them for a day and still see a new file as soon as it changes.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from litestar.datastructures import CacheControlHeader
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

UI_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = UI_DIR / "templates"
STATIC_DIR = UI_DIR / "static"
STATIC_PREFIX = "/static"


class StaticAssetMissing(LookupError):
    """A template links to a static file that is not in the package: a packaging bug."""


@lru_cache(maxsize=64)
def static_url(relative: str) -> str:
    """`/static/<relative>?v=<content hash>`; raises when the file does not exist."""
    path = (STATIC_DIR / relative).resolve()
    if STATIC_DIR not in path.parents or not path.is_file():
        raise StaticAssetMissing(f"no static file {relative!r} under {STATIC_DIR}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{STATIC_PREFIX}/{relative}?v={digest}"


def _configure(engine: JinjaTemplateEngine) -> None:
    env = engine.engine
    env.trim_blocks = True
    env.lstrip_blocks = True
    env.globals["static_url"] = static_url


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=TEMPLATES_DIR, engine=JinjaTemplateEngine, engine_callback=_configure)


def static_files_router() -> Router:
    return create_static_files_router(
        path=STATIC_PREFIX,
        directories=[STATIC_DIR],
        name="static",
        cache_control=CacheControlHeader(max_age=86_400, public=True),
        include_in_schema=False,
    )
