"""Each HTTP request is one lease scope: the model versions it looks up stay open until it has answered."""

from __future__ import annotations

from litestar.types import Receive, Scope, Send

from batchserve.server.http_middleware import HttpMiddleware
from batchserve.serving.leases import lease_scope


class LeaseScopeMiddleware(HttpMiddleware):
    """Outside routing, so the lease outlives the whole answer (streamed bodies included)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        with lease_scope():
            await self.app(scope, receive, send)
