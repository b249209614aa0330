"""Per-request identity: the request id every response and log line carries, and who asked.

A pure ASGI middleware wrapped around the whole app (not a route-level hook), so every answer,
Litestar's own 404/405 included, gets the `X-Request-ID` header.

Who asked: the name of the API key the front door recognised (see server/auth); a key it does not
recognise (only possible under `--auth off`) is named by an id derived from its hash; no key is
`anonymous`. The key itself is never kept.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from litestar.types import Message, Receive, Scope, Send

from batchserve.server.http_middleware import HttpMiddleware
from batchserve.serving.logs import current_request_id
from batchserve.serving.recording import Caller

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
ANONYMOUS = "anonymous"
_USER = "user"  # scope["state"] entry: the name of the recognised key


def user_from_api_key(api_key: str | None) -> str:
    """Events name a user by a key id derived from the key, never by the key itself."""
    if not api_key:
        return ANONYMOUS
    return "key-" + hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def presented_key(scope: Scope) -> str | None:
    """The API key the request carries: `Authorization: Bearer KEY`, else `X-API-Key`, else
    `X-Admin-Key` (an alias kept for model-control clients)."""
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    for name in (b"x-api-key", b"x-admin-key"):
        value = _header(scope, name)
        if value and value.strip():
            return value.strip()
    return None


def set_user(scope: Scope, name: str) -> None:
    """The request comes from the key named `name` (set by the front door once the key is recognised)."""
    scope.setdefault("state", {})[_USER] = name


def caller_of(scope: Scope) -> Caller:
    client = scope.get("client")
    state = scope.get("state", {})
    return Caller(
        request_id=state.get("request_id") or current_request_id.get(),
        user=state.get(_USER) or user_from_api_key(presented_key(scope)),
        client_ip=client[0] if client else None,
        user_agent=_header(scope, b"user-agent"),
        received_at=datetime.now(UTC),
    )


def request_id_of(scope: Scope) -> str:
    """The request's id: set by the middleware, else the client's (when sane), else a new one."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        given = _header(scope, b"x-request-id")
        state["request_id"] = given if given and _SAFE_ID.match(given) else uuid.uuid4().hex
    return state["request_id"]


class RequestIdMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope)
        token = current_request_id.set(request_id)
        raw_id = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", raw_id))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
