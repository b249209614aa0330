"""Running the server, and the one shutdown sequence.

SIGTERM → /readyz answers 503 (draining) → keep serving for `drain_delay` so load balancers
notice → stop accepting → in-flight and queued batches finish → the event writer flushes (or
spills to its journal) → exit, all within `shutdown_grace` (default 8 s, under Cloud Run's 10 s).
A second SIGINT (Ctrl-C twice) forces an immediate exit.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import ssl
import threading
import time
from types import FrameType

import uvicorn
from litestar.types import ASGIApp

from batchserve.server.app import build_state, create_app
from batchserve.server.config import ServerConfig
from batchserve.server.early_refusal import EarlyRefusal
from batchserve.server.http_protocol import head_bounded
from batchserve.server.routes.metrics import metrics_only_app
from batchserve.server.state import AppState
from batchserve.serving.metrics_listener import MetricsListener

log = logging.getLogger("batchserve.lifecycle")
# Time the lifespan shutdown keeps for closing batchers and flushing events.
FLUSH_RESERVE_S = 1.5


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: AppState, metrics_listener: MetricsListener | None = None,
                 ) -> None:
        super().__init__(config)
        self.state = state
        self.metrics_listener = metrics_listener
        state.lifecycle.on_exit_request = self._exit_now

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.metrics_listener is not None and not self.should_exit:
            await self.metrics_listener.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.metrics_listener is not None:
            await self.metrics_listener.stop()
        await super().shutdown(sockets)

    def _exit_now(self) -> None:
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        life = self.state.lifecycle
        if life.draining:
            if sig == signal.SIGINT:
                log.warning("second interrupt: exiting without waiting")
                self.force_exit = True
                self.should_exit = True
            return
        grace = self.state.config.lifecycle.shutdown_grace
        drain = 0.0 if sig == signal.SIGINT else self.state.config.lifecycle.drain_delay
        life.draining = True
        life.shutdown_deadline = time.monotonic() + grace
        log.info("%s: draining (readiness 503), stop accepting in %.1f s, exit within %.1f s",
                 signal.Signals(sig).name, drain, grace)
        threading.Timer(drain, self._stop_accepting).start()
        watchdog = threading.Timer(grace + 0.5, self._grace_exceeded)
        watchdog.daemon = True
        watchdog.start()

    def _stop_accepting(self) -> None:
        self.state.lifecycle.refusing = True
        self.should_exit = True  # uvicorn's main loop sees it within 0.1 s and closes the listeners

    @staticmethod
    def _grace_exceeded() -> None:
        log.error("shutdown grace exceeded: exiting now")
        logging.shutdown()
        os._exit(1)


def uvicorn_config(config: ServerConfig, app: ASGIApp, early_refusal: EarlyRefusal | None = None) -> uvicorn.Config:
    life = config.lifecycle
    admission = config.admission
    connections_grace = max(0.5, life.shutdown_grace - life.drain_delay - FLUSH_RESERVE_S)
    return uvicorn.Config(
        app,
        host=config.listen.host,
        port=config.listen.port,
        loop="uvloop",
        # httptools, with bounds on each request's head (size and time) that uvicorn does not set.
        http=head_bounded(admission.max_header_bytes, admission.header_read_timeout_s,
                          early_refusal if admission.early_refusal else None),
        lifespan="on",
        access_log=config.logging.access_log,
        log_config=None,  # our own logging set-up stays in charge
        # Annotated int, used as an asyncio.wait_for timeout: fractions of a second count.
        timeout_graceful_shutdown=connections_grace,  # type: ignore[arg-type]
        timeout_keep_alive=30,
        # Past it uvicorn answers a bare 503 without calling the app: the last line of defence, far
        # above what admission lets in, so it only bounds idle and slow connections.
        limit_concurrency=admission.max_connections,
        backlog=2048,
        server_header=False,
        ssl_certfile=config.listen.ssl_certfile,
        ssl_keyfile=config.listen.ssl_keyfile,
    )


def serve(config: ServerConfig) -> int:
    """Run until a signal; returns the process exit code."""
    state = build_state(config)
    app = create_app(config, load_in_background=True, state=state)
    listen = config.listen
    if listen.ssl_certfile is not None:
        try:  # uvicorn would only fail later, with a traceback
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(listen.ssl_certfile, listen.ssl_keyfile)
        except (OSError, ssl.SSLError) as exc:
            log.error("cannot serve HTTPS with %s and %s: %s", listen.ssl_certfile, listen.ssl_keyfile, exc)
            return 1
    metrics_listener = None
    if listen.metrics_port is not None and state.metrics is not None:
        try:
            metrics_listener = MetricsListener(metrics_only_app(state.metrics), listen.host, listen.metrics_port,
                                               http=head_bounded(config.admission.max_header_bytes,
                                                                 config.admission.header_read_timeout_s))
        except OSError as exc:
            log.error("cannot listen for metrics on %s:%d: %s", listen.host, listen.metrics_port, exc)
            return 1
    server = GracefulServer(uvicorn_config(config, app, app.state["early_refusal"]), state, metrics_listener)
    serving = config.serving
    scheme = "https" if listen.ssl_certfile is not None else "http"
    log.info("batchserve listening on %s://%s:%d (models: %s)", scheme, listen.host, listen.port,
             ", ".join(serving.models) or "all built" + (" + simulated" if serving.simulate_model else ""))
    # What exists now (modules, the app, its routes) lives as long as the process. Frozen, the
    # collector no longer walks it on each full collection: under load those walked the whole heap
    # with the GIL held and stalled every request for up to 140 ms (measured: docs/performance.md).
    gc.freeze()
    server.run()
    if not server.started:
        return 1
    return state.lifecycle.exit_code
