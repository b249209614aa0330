"""`--metrics-port`: `/metrics` alone on a listener of its own, without auth, for the scrapers of a
private network (as Triton's metrics port). The server's API port keeps its own `/metrics` behind
the stats scope; the queue worker, which has no API, has only this one.

It runs in the process's event loop, as a second uvicorn server sharing nothing but the metrics
registry; its socket is bound before the process takes work, so a taken port fails the start
with a clear message instead of half a server.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

log = logging.getLogger("batchserve.metrics")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=64)
    sock.set_inheritable(True)
    return sock


class MetricsListener:
    def __init__(self, app: Callable[..., Any], host: str, port: int, http: type[Any] | str = "httptools") -> None:
        """`http`: uvicorn's protocol, or a class of it (the server passes its head-bounded one)."""
        self.socket = bind(host, port)  # OSError when the port is taken
        self.host = host
        self.port = int(self.socket.getsockname()[1])
        # access_log=False would silence the process-wide `uvicorn.access` logger, the API port's
        # --access-log included; left on, scrapes are logged exactly when API requests are.
        config = uvicorn.Config(app, http=http, lifespan="off", log_config=None,
                                access_log=True, server_header=False, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)

    async def start(self) -> None:
        config = self.server.config
        if not config.loaded:
            config.load()
        # What uvicorn's own serve() sets up before startup(); lifespan is off, so it does nothing.
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup(sockets=[self.socket])
        log.info("metrics (no auth) on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self.server.started:
            await self.server.shutdown(sockets=[self.socket])
        else:
            self.socket.close()
