"""Each HTTP request is one lease scope: the model versions it looks up stay open until it has answered."""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from batchserve.serving.leases import lease_scope


class LeaseScopeMiddleware:
    """Pure ASGI, outside routing, so the lease outlives the whole answer (streamed bodies included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        with lease_scope():
            await self.app(scope, receive, send)
