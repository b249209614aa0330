"""The web UI: home, about, upload-and-classify and a live dashboard.

Jinja2 templates rendered by Litestar, plain scripts and styles served as static files (no
front-end build step), charts drawn by a vendored Chart.js (see static/vendor/chart.js/).
"""

from batchserve.server.ui.pages import PAGE_PATHS, ui_route_handlers
from batchserve.server.ui.templating import STATIC_PREFIX, template_config

__all__ = ["PAGE_PATHS", "STATIC_PREFIX", "template_config", "ui_route_handlers"]
