"""The Litestar application factory: wires the configuration, the serving core, metrics and routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from batchserve import __version__
from batchserve.jobs.errors import QueueModeSetupError
from batchserve.jobs.web_tier import QueueBackend, WebTierSettings
from batchserve.server.admission import Admission, AdmissionMiddleware
from batchserve.server.auth.gatekeeper import Gatekeeper
from batchserve.server.auth.policy import AccessPolicy
from batchserve.server.cloudwatch import emf_lifespan
from batchserve.server.config import ServerConfig
from batchserve.server.early_refusal import EarlyRefusal
from batchserve.server.errors import fallback_exception_handler
from batchserve.server.fast_classify import ClassifyFastPath
from batchserve.server.lease_scope import LeaseScopeMiddleware
from batchserve.server.metrics import HttpMetricsMiddleware, Metrics
from batchserve.server.remote.backend import RemoteBackend
from batchserve.server.request_context import RequestIdMiddleware
from batchserve.server.routes.health import healthz, readyz
from batchserve.server.routes.jobs import JobsController
from batchserve.server.routes.metrics import metrics as metrics_route
from batchserve.server.routes.repository import RepositoryController
from batchserve.server.routes.stats import stats
from batchserve.server.routes.v1 import ClassifyController
from batchserve.server.routes.v2 import V2Controller
from batchserve.server.state import AppState
from batchserve.server.ui import PAGE_PATHS, STATIC_PREFIX, template_config, ui_route_handlers
from batchserve.serving.backend import Backend, DirectBackend
from batchserve.serving.core import Serving
from batchserve.serving.pressure import Bound

log = logging.getLogger("batchserve.app")
SCHEMA_PATH = "/schema"


def build_state(config: ServerConfig) -> AppState:
    metrics = Metrics()
    queued = config.backend.backend == "queue"
    remote = config.backend.backend == "remote"
    serving = Serving.build(config.serving, config.events, retire_grace_s=config.lifecycle.shutdown_grace,
                            on_batch=metrics.observe_batch, cache=config.cache, catalog_only=queued or remote)
    serving.classifier.pending_decodes = Bound(config.admission.max_pending_decodes)
    backend: Backend = DirectBackend(serving.classifier)
    if queued:
        backend = QueueBackend(WebTierSettings(config.queue, config.backend.queue_timeout_ms,
                                               config.backend.reply_pollers,
                                               inline_max_bytes=config.backend.queue_inline_max_bytes))
    elif remote:
        # The upstreams serve the models: the routes read them from a catalog of their listings.
        forwarding = RemoteBackend.build(config.backend, config.serving,
                                         retire_grace_s=config.lifecycle.shutdown_grace)
        serving.registry = forwarding.catalog
        backend = forwarding
    state = AppState(config=config, serving=serving, backend=backend, metrics=metrics)
    metrics.watch(state)
    return state


async def _load_models(state: AppState, on_failure: Callable[[], None]) -> None:
    registry = state.serving.registry
    try:
        await registry.load_configured()
        await state.backend.start()
    except QueueModeSetupError as exc:
        log.error("%s; the server cannot become ready", exc)
        on_failure()
        raise
    except Exception:
        log.exception("loading models failed; the server cannot become ready")
        on_failure()
        raise
    state.lifecycle.warm = True
    log.info("ready: %s", ", ".join(f"{m.name} v{m.version}" for m in registry.loaded()))
    state.gpu.unmet(registry.loaded())  # with --require-gpu, logs why /readyz refuses before any probe asks


def make_lifespan(
    state: AppState, *, load_in_background: bool
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await state.serving.start()
        loader = None
        if load_in_background:
            # Accept connections at once: /healthz answers and /readyz says 503 while models warm up.
            loader = asyncio.create_task(_load_models(state, state.lifecycle.request_exit))
        else:
            await _load_models(state, lambda: None)
        try:
            yield
        finally:
            if loader is not None and not loader.done():
                loader.cancel()
            elif loader is not None and not loader.cancelled():
                loader.exception()  # logged by _load_models already; read so asyncio does not log it again
            await state.backend.close(state.lifecycle.seconds_left(state.config.lifecycle.shutdown_grace) / 4)
            # In-flight and queued batches finish, then events flush, within what is left of the grace.
            await state.serving.close(state.lifecycle.seconds_left(state.config.lifecycle.shutdown_grace))
            log.info("stopped")

    return lifespan


def create_app(config: ServerConfig, *, load_in_background: bool = False, state: AppState | None = None,
               fast_path: bool = True) -> Litestar:
    """The app; `fast_path=False` sends every request through Litestar's routing (the tests compare
    the two)."""
    state = state or build_state(config)
    gatekeeper = Gatekeeper(config, AccessPolicy(PAGE_PATHS, SCHEMA_PATH, STATIC_PREFIX))
    app = Litestar(
        route_handlers=[ClassifyController, V2Controller, RepositoryController, metrics_route, stats, healthz, readyz,
                        JobsController, *ui_route_handlers()],
        template_config=template_config(),
        dependencies={"app_state": Provide(lambda: state, use_cache=True, sync_to_thread=False)},
        # Route families render their own errors (see server/errors.py); this answers the rest.
        exception_handlers={Exception: fallback_exception_handler},
        lifespan=[gatekeeper.lifespan(), make_lifespan(state, load_in_background=load_in_background),
                  *([emf_lifespan(state)] if config.cloudwatch.cloudwatch_emf else [])],
        request_max_body_size=config.limits.max_body_bytes,
        multipart_form_part_limit=config.limits.max_images_per_request + 16,
        openapi_config=OpenAPIConfig(
            title="batchserve", version=__version__, path=SCHEMA_PATH, render_plugins=[SwaggerRenderPlugin()],
            description="Dynamically batched image classification (ONNX Runtime).",
        ),
        debug=False,
        logging_config=None,  # serving.logs owns logging; Litestar would install its own handlers
    )
    app.state["app_state"] = state
    app.state["gatekeeper"] = gatekeeper
    gatekeeper.describe(app)
    if state.metrics is not None:
        gatekeeper.watch(state.metrics.registry)
    # Innermost of the wrappers: it refuses before routing and before the body is read.
    admission = Admission(state)
    app.asgi_handler = AdmissionMiddleware(app.asgi_handler, admission)
    # Keys and rate limits before admission: a caller without a valid key takes no admission slot.
    guard = gatekeeper.guard(app.asgi_handler, app.asgi_router, state.serving.recorder)
    app.asgi_handler = guard
    # Outside routing, so unmatched paths are counted too; leases wrap metrics, which read them.
    if state.metrics is not None:
        app.asgi_handler = HttpMetricsMiddleware(app.asgi_handler, state.metrics)
    app.asgi_handler = LeaseScopeMiddleware(app.asgi_handler)
    # Every answer, Litestar's own 404/405 included, carries X-Request-ID.
    app.asgi_handler = RequestIdMiddleware(app.asgi_handler)
    if fast_path:
        # Outermost: a raw-body classification takes the same steps as above in one coroutine.
        app.asgi_handler = ClassifyFastPath(app.asgi_handler, state, guard, admission)
    # For the server's HTTP protocol (server/lifecycle.py): refusals it may answer before the app.
    app.state["early_refusal"] = EarlyRefusal(admission, guard, state.metrics, state.serving.recorder)
    return app
