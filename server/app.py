"""The Litestar application factory: wires config, models, classifier, events and routes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from batchserve.events.config import EventsConfig
from batchserve.events.writer import EventWriter
from batchserve import __version__
from batchserve.server.config import ServerConfig
from batchserve.server.errors import exception_handler
from batchserve.server.cloudwatch import emf_lifespan
from batchserve.server.inference import Classifier
from batchserve.server.leases import LeaseScope
from batchserve.server.metrics import HttpMetricsMiddleware, Metrics
from batchserve.server.recording import Recorder
from batchserve.server.registry import ModelRegistry
from batchserve.server.request_context import RequestIdMiddleware
from batchserve.server.routes.health import healthz, readyz
from batchserve.server.routes.metrics import metrics as metrics_route
from batchserve.server.routes.repository import RepositoryController
from batchserve.server.routes.stats import stats
from batchserve.server.routes.v1 import ClassifyController
from batchserve.server.routes.v2 import V2Controller
from batchserve.server.state import AppState
from batchserve.server.ui import template_config, ui_route_handlers

log = logging.getLogger("batchserve.app")


def events_config(config: ServerConfig) -> EventsConfig:
    return EventsConfig(
        database_url=config.database_url,
        events_path=config.events_path,
        journal_dir=config.journal_dir,
        flush_interval_ms=config.events_flush_interval_ms,
        pii=config.events_pii,
    )


def build_state(config: ServerConfig) -> AppState:
    writer = EventWriter(events_config(config)) if config.events else None
    decode_threads = config.preprocess_threads or os.cpu_count() or 2
    metrics = Metrics()
    state = AppState(
        config=config,
        registry=ModelRegistry(config, on_batch=metrics.observe_batch),
        classifier=Classifier(ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")),
        recorder=Recorder(writer),
        writer=writer,
        metrics=metrics,
    )
    metrics.watch(state)
    return state


async def _load_models(state: AppState, on_failure: Any) -> None:
    try:
        await state.registry.load_configured()
    except Exception:
        log.exception("loading models failed; the server cannot become ready")
        on_failure()
        raise
    state.lifecycle.warm = True
    log.info("ready: %s", ", ".join(f"{m.name} v{m.version}" for m in state.registry.loaded()))


def _seconds_left(state: AppState, default: float) -> float:
    deadline = state.lifecycle.shutdown_deadline
    return default if deadline is None else max(0.1, deadline - time.monotonic())


def make_lifespan(state: AppState, *, load_in_background: bool):
    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if state.writer is not None:
            await state.writer.start()
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
            grace = state.config.shutdown_grace
            # In-flight and queued batches finish; leave the last part of the grace to the event flush.
            await state.registry.close(timeout=_seconds_left(state, grace) * 0.6)
            if state.writer is not None:
                await state.writer.close(timeout=_seconds_left(state, grace) - 0.2)
            state.classifier.decode_pool.shutdown(wait=False)
            log.info("stopped")

    return lifespan


def create_app(config: ServerConfig, *, load_in_background: bool = False, state: AppState | None = None) -> Litestar:
    state = state or build_state(config)
    app = Litestar(
        route_handlers=[ClassifyController, V2Controller, RepositoryController, metrics_route, stats, healthz, readyz,
                        *ui_route_handlers()],
        template_config=template_config(),
        dependencies={"app_state": Provide(lambda: state, use_cache=True, sync_to_thread=False)},
        exception_handlers={Exception: exception_handler},
        lifespan=[make_lifespan(state, load_in_background=load_in_background),
                  *([emf_lifespan(state)] if config.cloudwatch_emf else [])],
        request_max_body_size=config.max_body_bytes,
        multipart_form_part_limit=config.max_images_per_request + 16,
        openapi_config=OpenAPIConfig(
            title="batchserve", version=__version__, path="/schema", render_plugins=[SwaggerRenderPlugin()],
            description="Dynamically batched image classification (ONNX Runtime).",
        ),
        debug=False,
        logging_config=None,  # server.logs owns logging; Litestar would install its own handlers
    )
    app.state["app_state"] = state
    # Outside routing, so unmatched paths are counted too; leases wrap metrics, which read them.
    if isinstance(state.metrics, Metrics):
        app.asgi_handler = HttpMetricsMiddleware(app.asgi_handler, state.metrics)
    app.asgi_handler = LeaseScope(app.asgi_handler)
    # Outermost: every answer, Litestar's own 404/405 included, carries X-Request-ID.
    app.asgi_handler = RequestIdMiddleware(app.asgi_handler)
    return app
