"""The base of the pure ASGI wrappers the app factory puts around the whole Litestar app.

They sit outside Litestar's own middleware stack on purpose: that stack runs after routing, and
these must see every answer, Litestar's own 404 and 405 included. Only HTTP requests concern
them; lifespan events pass straight through.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP request; call `self.app` to pass it on."""
        raise NotImplementedError
