"""The front door's key check and rate limit: a pure ASGI wrapper that answers 401, 403, 429 (or
503 while the key table was never readable) before Litestar routes the request or reads its body.

Under `--auth required` every route but the public ones needs a valid key with the route's scope.
Under `--auth off` nothing is refused for want of a key, but a key the server knows still names
the caller in events and still draws on its rate limit; model control (admin) always needs a key
with the admin scope, which its route checks (see `require_scope`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.utils import normalize_path

from batchserve.server.auth.directory import KeyDirectory
from batchserve.server.auth.keys import MAX_KEY_LENGTH, Identity, key_digest
from batchserve.server.auth.policy import Access, AccessPolicy
from batchserve.server.auth.ratelimit import RateLimiter
from batchserve.server.door import refuse
from batchserve.server.http_middleware import HttpMiddleware
from batchserve.server.request_context import presented_key, set_user
from batchserve.serving.errors import ErrorInfo, Forbidden, RateLimited, ServeError, Unauthorized, describe
from batchserve.serving.recording import Recorder

_IDENTITY = "identity"  # scope["state"] entry: the recognised key's Identity
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="batchserve"'}
HOW = "send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


class AuthUnavailable(ServeError):
    """The key table could not be read since the server started: a key cannot be told valid or not."""

    status, code = 503, "auth_unavailable"


def identity_in(scope: Scope) -> Identity | None:
    identity = scope.get("state", {}).get(_IDENTITY)
    return identity if isinstance(identity, Identity) else None


def require_scope(scope: Scope, needed: str) -> Identity:
    """For routes that need a scope even under `--auth off`: the caller's identity, or the error."""
    identity = identity_in(scope)
    if identity is None:
        raise Unauthorized(f"this route needs an API key with the {needed!r} scope: {HOW}", headers=CHALLENGE)
    if not identity.may(needed):
        raise Forbidden(f"the API key {identity.name!r} lacks the {needed!r} scope")
    return identity


class GuardStats:
    def __init__(self) -> None:
        self.refused: dict[str, int] = {"unauthorized": 0, "forbidden": 0, "rate_limited": 0, "auth_unavailable": 0}


class AuthGuard(HttpMiddleware):
    def __init__(
        self, app: ASGIApp, *, required: bool, policy: AccessPolicy, directory: KeyDirectory, limiter: RateLimiter,
        router: Any, recorder: Recorder | None, stats: GuardStats | None = None,
    ) -> None:
        super().__init__(app)
        self.required = required
        self.policy = policy
        self.directory = directory
        self.limiter = limiter
        self.router = router  # Litestar's ASGIRouter: resolves a path to its route template, as routing will
        self.recorder = recorder
        self.stats = stats or GuardStats()

    def route(self, path: str, method: object) -> tuple[str | None, Any]:
        """The route template and handler that routing will pick for the request (None, None: no route)."""
        try:
            _, handler, _, _, template = self.router.handle_routing(path=normalize_path(path), method=method)
        except Exception:  # noqa: BLE001 - no such route or method: routing will answer 404/405 itself
            return None, None
        return template, handler

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        template, handler = self.route(scope.get("path", "/"), scope.get("method"))
        rate_headers = await self.check(scope, send, started, template, handler)
        if rate_headers is None:
            return
        if not rate_headers:
            await self.app(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *rate_headers]
            await send(message)

        await self.app(scope, receive, send_with_limits)

    async def check(self, scope: Scope, send: Send, started: float, template: str | None,
                    handler: Any) -> list[tuple[bytes, bytes]] | None:
        """The key and the rate limit of a request to the route `template` (None: no route). None
        when it is refused (answered here); else the rate-limit headers its answer carries (none
        for a caller without a limit)."""
        access = self.policy.for_template(template)
        key = presented_key(scope)
        identity: Identity | None = None
        if key is not None and len(key) <= MAX_KEY_LENGTH:
            # Under auth off only model control refuses a caller, so only there is a fresh look worth a wait.
            must_know = (self.required and access is not Access.PUBLIC) or access is Access.ADMIN
            identity = await self._identify(key, started, fresh=must_know)
        if identity is not None:
            set_user(scope, identity.name)
            scope.setdefault("state", {})[_IDENTITY] = identity

        if self.required and access is not Access.PUBLIC:
            problem = self._problem(access, key, identity)
            if problem is not None:
                await self._refuse(scope, send, problem, started, template, handler)
                return None

        if identity is None or access is Access.PUBLIC:
            return []
        decision = await self.limiter.take(identity)
        if decision is None:
            return []
        headers = decision.headers()
        if not decision.allowed:
            problem = RateLimited(f"the API key {identity.name!r} is over its rate limit", headers=headers)
            await self._refuse(scope, send, problem, started, template, handler)
            return None
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def _identify(self, key: str, started: float, *, fresh: bool) -> Identity | None:
        digest = key_digest(key)
        identity = await self.directory.find_fresh(digest, started) if fresh else self.directory.find(digest)
        if identity is not None and identity.expired(datetime.now(UTC)):
            return None
        return identity

    def _problem(self, access: Access, key: str | None, identity: Identity | None) -> ServeError | None:
        if identity is None:
            if key is None:
                return Unauthorized(f"this route needs an API key: {HOW}", headers=CHALLENGE)
            if not self.directory.loaded:
                return AuthUnavailable("API keys cannot be checked right now (the key database does not answer)",
                                       headers={"Retry-After": "5"})
            return Unauthorized("the API key is not valid (unknown, revoked or expired)", headers=CHALLENGE)
        needed = access.scope
        if needed is not None and not identity.may(needed):
            return Forbidden(f"the API key {identity.name!r} lacks the {needed!r} scope this route needs")
        return None

    async def _refuse(self, scope: Scope, send: Send, problem: ServeError, started: float, template: str | None,
                      handler: Any) -> None:
        info: ErrorInfo = describe(problem)
        self.stats.refused[info.code] = self.stats.refused.get(info.code, 0) + 1
        if template is not None:
            # Routing never runs for this request: say which route it was, for the HTTP metrics' labels.
            scope["path_template"], scope["route_handler"] = template, handler
        await refuse(scope, send, self.recorder, info, started)
