"""Overload refusals answered by the HTTP protocol itself, as soon as a request's headers are in.

Under overload most classification requests are refused (503 `overloaded`), and on a machine
whose cores also decode and run the model, each refusal's CPU is taken from the admitted
requests. Through the app a refusal costs an asyncio task, the chain of ASGI wrappers and two
socket writes; here it costs the admission check, one write, its event and its metrics
(measured: docs/performance.md, "Overload").

It answers only where the app's answer is known to be this same refusal, with the same status,
headers, body, event and metrics (tests/server/test_early_refusal.py sends the same requests
to a server with it and one without, and compares):
- a POST to a classification route (`door.classify_route`);
- that the key check lets through untouched: `--auth off` and no key presented (a key names the
  caller and draws on its rate limit, which may wait for Redis);
- without `Expect: 100-continue` (the app refuses those with `Connection: close`) or a declared
  body over the limit (the app answers 413 first);
- that admission refuses now (`Admission.refusal`, which takes nothing here), and whose refusal
  is not paced (a paced refusal waits in a coroutine).
Everything else goes to the app as before. The body that follows a refusal is read and dropped
by the parser, as after any answer that came before its request's end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from batchserve.server.admission import expects_continue
from batchserve.server.door import classify_route, error_answer
from batchserve.server.request_context import caller_of, request_id_of
from batchserve.serving.errors import describe
from batchserve.serving.logs import current_request_id

if TYPE_CHECKING:
    from litestar.types import HTTPScope, Scope

    from batchserve.server.admission import Admission
    from batchserve.server.auth.guard import AuthGuard
    from batchserve.server.metrics import Metrics
    from batchserve.serving.recording import Recorder

# Headers that carry a key (see request_context.presented_key): such a request is the app's.
_KEY_HEADERS = frozenset((b"authorization", b"x-api-key", b"x-admin-key"))
Headers = list[tuple[bytes, bytes]]


class EarlyRefusal:
    """What the server's HTTP protocol asks (server/http_protocol.py) before it starts a request's
    ASGI task: `answer` returns the refusal to write, or None to run the app."""

    def __init__(self, admission: Admission, guard: AuthGuard, metrics: Metrics | None, recorder: Recorder | None,
                 ) -> None:
        self.admission = admission
        self.guard = guard
        self.metrics = metrics
        self.recorder = recorder
        self._proxy = ProxyHeadersMiddleware(_nothing)

    def answer(self, scope: HTTPScope, app: Any, access_log: Callable[[HTTPScope, int], None] | None,
               ) -> tuple[int, Headers, bytes] | None:
        """The refusal's status, headers and body when this request is refused here, its event
        recorded and its answer counted; None when the app is to answer it."""
        if scope["method"] != "POST" or self.guard.required:
            return None
        route = classify_route(scope)
        if route is None or not self._plain(scope):
            return None
        admission = self.admission
        pacer = admission.gate.pacer
        if pacer.would_wait():
            return None
        started, perf_started = time.monotonic(), time.perf_counter()
        refusal = admission.refusal(route, take=False)
        if refusal is None:
            return None
        pacer.delay()  # takes its turn, 0 s: it did not have to wait
        info = describe(refusal)
        request_id = request_id_of(scope)
        seen = self._as_the_app_sees_it(scope, app)
        if self.recorder is not None:
            self.recorder.record_refused(caller_of(seen), route.family, info, (time.monotonic() - started) * 1000.0,
                                         route.model)
        headers, body = error_answer(scope["path"], info)
        headers.append((b"x-request-id", request_id.encode("latin-1")))
        if access_log is not None:
            token = current_request_id.set(request_id)  # the log line names its request, as the app's do
            try:
                access_log(seen, info.status)
            finally:
                current_request_id.reset(token)
        if self.metrics is not None:
            self.metrics.observe_answer(scope, info.status, perf_started)
        admission.gate.answered_early += 1
        return info.status, headers, body

    def _plain(self, scope: Scope) -> bool:
        """No key, no `Expect: 100-continue`, and no declared body over the limit: what the app
        answers differently (or first)."""
        if any(name in _KEY_HEADERS for name, _ in scope["headers"]):
            return False
        return not expects_continue(scope) and self.admission.declared_over_limit(scope) is None

    def _as_the_app_sees_it(self, scope: HTTPScope, app: Any) -> HTTPScope:
        """The scope with the client (and scheme) uvicorn's ProxyHeadersMiddleware would give the
        app, when the server runs it: a copy, the request's own scope is left as it came."""
        if not isinstance(app, ProxyHeadersMiddleware):
            return scope
        self._proxy.trusted_hosts = app.trusted_hosts
        seen = dict(scope)
        # The middleware rewrites the scope, then awaits the app, which returns at once: one step.
        step = self._proxy(seen, _never, _never)  # type: ignore[arg-type]
        try:
            step.send(None)
        except StopIteration:
            return seen  # type: ignore[return-value]
        step.close()
        raise RuntimeError("uvicorn's ProxyHeadersMiddleware awaited something other than the app")


def uvicorn_access_log(logger: logging.Logger) -> Callable[[HTTPScope, int], None]:
    """The access-log line uvicorn writes for each answer, for the answers written here."""

    def log(scope: HTTPScope, status: int) -> None:
        logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],  # type: ignore[arg-type]
                    get_path_with_query_string(scope), scope["http_version"], status)  # type: ignore[arg-type]

    return log


async def _nothing(scope: Any, receive: Any, send: Any) -> None:
    return None


async def _never(*args: Any) -> Any:
    raise RuntimeError("not called")
