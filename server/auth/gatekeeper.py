"""Authentication and rate limits as the app factory wires them: built from the configuration,
started and stopped with the app, seen by the metrics and described in the OpenAPI schema."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.types import ASGIApp
from prometheus_client import CollectorRegistry

from batchserve.events.keys import open_key_store
from batchserve.server.auth.directory import KeyDirectory
from batchserve.server.auth.guard import AuthGuard, GuardStats
from batchserve.server.auth.metrics import AuthCollector
from batchserve.server.auth.openapi import document_auth
from batchserve.server.auth.policy import AccessPolicy
from batchserve.server.auth.ratelimit import RateLimiter, RedisBuckets
from batchserve.server.config import ServerConfig
from batchserve.serving.recording import Recorder

log = logging.getLogger("batchserve.auth")
# A request that waits for the key table waits at most this long per database call: an
# unreachable database must not hold callers for the event store's longer write timeout.
KEY_STORE_TIMEOUT_S = 2.0


class Gatekeeper:
    def __init__(self, config: ServerConfig, policy: AccessPolicy) -> None:
        auth = config.auth
        self.required = auth.auth == "required"
        self.policy = policy
        store = open_key_store(config.events, timeout_s=min(KEY_STORE_TIMEOUT_S, config.events.store_timeout_s))
        self.directory = KeyDirectory(store, auth.admin_key, refresh_s=auth.key_refresh_s)
        shared = RedisBuckets(auth.redis_url, timeout_s=auth.redis_timeout_s) if auth.redis_url else None
        self.limiter = RateLimiter(shared)
        self.guard_stats = GuardStats()
        self._where = store.describe()
        self._redis = "Redis (shared by replicas)" if shared is not None else "this process"

    def guard(self, app: ASGIApp, router: Any, recorder: Recorder | None) -> AuthGuard:
        return AuthGuard(app, required=self.required, policy=self.policy, directory=self.directory,
                         limiter=self.limiter, router=router, recorder=recorder, stats=self.guard_stats)

    def watch(self, registry: CollectorRegistry) -> None:
        registry.register(AuthCollector(self.directory, self.limiter, self.guard_stats))

    def describe(self, app: Litestar) -> None:
        document_auth(app.openapi_schema, self.policy, required=self.required)

    def lifespan(self) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
        @asynccontextmanager
        async def lifespan(_: Litestar) -> AsyncIterator[None]:
            log.info("auth %s: keys from %s, rate limits kept by %s", "required" if self.required else "off",
                     self._where, self._redis)
            self.directory.start()
            try:
                yield
            finally:
                await self.directory.close()
                await self.limiter.close()

        return lifespan
