"""The UI's page handlers: home, about, upload-and-classify and the live dashboard.

Pages are rendered on the server from the application state; everything that changes after
the page has loaded (classification results, charts) is fetched by static scripts from the
same public API any client uses (`/v1/classify`, `/v1/models`, `/v1/stats`).

Under `--auth required` the pages themselves stay open (they carry nothing a key protects: the
home page then leaves out the models' details) and ask for a key, which their scripts send on
every API call.
"""

from __future__ import annotations

from litestar import Controller, MediaType, Request, get
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.response import Template
from litestar.types import ControllerRouterHandler

from batchserve import __version__
from batchserve.server.errors import V1_HANDLERS
from batchserve.server.state import AppState
from batchserve.server.ui.templating import static_files_router
from batchserve.server.ui.views import model_cards, service_status

# Scripts, styles and API calls come only from this origin, and nothing inline runs: the pages
# work under this policy, and the browser tests fail on any violation it reports.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",   # previews of chosen files are blob: URLs
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

PAGE_HEADERS = [
    ResponseHeader(name="Content-Security-Policy", value=CONTENT_SECURITY_POLICY),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Referrer-Policy", value="same-origin"),
]

NAV = (("/", "Home"), ("/upload", "Classify"), ("/dashboard", "Dashboard"), ("/about", "About"))
# Open to callers without a key under --auth required: the pages ask for one and send it on their API calls.
PAGE_PATHS = tuple(path for path, _ in NAV)


def _page(name: str, path: str, title: str, app_state: AppState, **context: object) -> Template:
    return Template(
        template_name=name,
        context={"nav": NAV, "current": path, "title": title, "version": __version__,
                 "auth_mode": app_state.config.auth.auth, **context},
    )


class UIController(Controller):
    path = "/"
    include_in_schema = False
    response_headers = PAGE_HEADERS
    exception_handlers = V1_HANDLERS

    @get("/", media_type=MediaType.HTML, name="ui:home")
    async def home(self, request: Request, app_state: NamedDependency[AppState]) -> Template:
        open_models = app_state.config.auth.auth != "required"  # model metadata needs the classify scope
        return _page(
            "home.html", "/", "batchserve", app_state,
            origin=str(request.base_url).rstrip("/"),
            status=service_status(app_state, __version__),
            models=model_cards(app_state) if open_models else [],
            expected=list(app_state.serving.registry.expected) if open_models else [],
            models_need_key=not open_models,
        )

    @get("/about", media_type=MediaType.HTML, name="ui:about")
    async def about(self, app_state: NamedDependency[AppState]) -> Template:
        return _page("about.html", "/about", "About batchserve", app_state,
                     status=service_status(app_state, __version__))

    @get("/upload", media_type=MediaType.HTML, name="ui:upload")
    async def upload(self, app_state: NamedDependency[AppState]) -> Template:
        return _page(
            "upload.html", "/upload", "Classify images", app_state,
            max_files=app_state.config.limits.max_images_per_request,
            max_bytes=app_state.config.limits.max_body_bytes,
            default_model=app_state.serving.registry.default_name() or "",
        )

    @get("/dashboard", media_type=MediaType.HTML, name="ui:dashboard")
    async def dashboard(self, app_state: NamedDependency[AppState]) -> Template:
        return _page("dashboard.html", "/dashboard", "Dashboard", app_state,
                     events_on=app_state.serving.writer is not None,
                     drift_on=app_state.serving.recorder.drift is not None)


def ui_route_handlers() -> list[ControllerRouterHandler]:
    """Everything the UI adds to the app: its pages and the static files router."""
    return [UIController, static_files_router()]
