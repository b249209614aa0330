"""Admission: which classification requests the server takes on, decided before any work is done.

A pure ASGI wrapper, outside Litestar: a refusal costs neither routing nor a read of the body. A
classification request (see `door.classify_route`; nothing else is subject to admission, so
health, readiness and metrics always answer) is refused with 503 `overloaded` and `Retry-After`,
its body unread, when

- the batcher queue of the model it names is already full: after reading and decoding it, the
  batcher could only have refused it;
- `max_concurrent_requests` classification requests are already admitted (reading, decoding,
  queued or running).

Refusals are answered at once, unless clients retry so fast that answering them would take the
CPU the admitted requests need: see refusal_pacing.py.

An admitted request must deliver its whole body within `body_read_timeout_s` of its headers, or
it is answered 408 `request_timeout` and its connection closed, so a client that trickles its
body (slowloris) holds a place for a bounded time only. The third bound, on images waiting for
a decode thread, belongs to the serving core's classifier (every front end has it).

A refusal keeps the connection open: uvicorn's parser reads and discards the unread rest of the
body (it never buffers it once the answer is complete), and a client that retries at once
reuses its connection instead of opening a new one (closing it instead was measured to cost the
admitted requests more CPU: docs/performance.md). Only a request that sent
`Expect: 100-continue` is refused with `Connection: close`: it was never told to send its body,
so the connection cannot be reused.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from litestar.types import ASGIApp, Receive, Scope, Send

from batchserve.server.body_deadline import receive_by
from batchserve.server.client_numbers import ascii_int
from batchserve.server.door import ClassifyRoute, classify_route, refuse
from batchserve.server.http_middleware import HttpMiddleware
from batchserve.server.refusal_pacing import RefusalPacer
from batchserve.serving.errors import Overloaded, PayloadTooLarge, RequestTimeout, describe
from batchserve.serving.pressure import Bound, bound_refusal, queue_refusal

if TYPE_CHECKING:
    from batchserve.server.config import AdmissionConfig
    from batchserve.server.state import AppState
    from batchserve.serving.registry import LoadedModel, ModelRegistry

CLOSE = {"Connection": "close"}
# Refusals answered at once per second whatever the completion rate (a model that just started, or
# whose batches fail, completes little), and the longest a paced refusal waits.
REFUSALS_FLOOR_PER_S = 200.0
REFUSAL_MAX_WAIT_S = 5.0


@dataclass
class AdmissionGate:
    """The server's admission bounds and what they refused (read by the metrics at scrape time)."""

    requests: Bound
    pacer: RefusalPacer
    body_read_timeout_s: float
    refused_queue_full: int = 0
    body_timeouts: int = 0
    answered_early: int = 0  # refusals the HTTP protocol answered before the app (early_refusal.py)

    @classmethod
    def from_config(cls, config: AdmissionConfig) -> AdmissionGate:
        pacer = RefusalPacer(config.refusal_ratio, REFUSALS_FLOOR_PER_S, REFUSAL_MAX_WAIT_S)
        return cls(Bound(config.max_concurrent_requests), pacer, config.body_read_timeout_s)


def target_model(registry: ModelRegistry, route: ClassifyRoute) -> LoadedModel | None:
    """The loaded version the request asks for, or None when it names none that exists (the route
    then answers that error itself)."""
    version = route.version
    if version is not None and not (version.isascii() and version.isdigit()):
        return None
    try:
        return registry.find(route.model, int(version) if version is not None else None)
    except Exception:  # noqa: BLE001 - an unknown model or version is the route's to answer, not ours
        return None


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length the client declared (the HTTP parser has refused malformed ones)."""
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            return ascii_int(value.decode("latin-1"), max_digits=19)
    return None


def expects_continue(scope: Scope) -> bool:
    return any(key == b"expect" and value.lower() == b"100-continue" for key, value in scope.get("headers", ()))


class Admission:
    """The admission decision and the body's deadline, for the middleware below and for the
    classification fast path (fast_classify.py), which admits without the middleware around it."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.gate = state.admission

    async def admit(self, scope: Scope, send: Send, route: ClassifyRoute) -> bool:
        """True when the request is admitted: it holds a place until `release`. False when it was
        refused (and answered here)."""
        declared = self.declared_over_limit(scope)
        if declared is not None:
            limit = self.state.config.limits.max_body_bytes
            # Refused before a byte is read; the connection stays open and the server skips the
            # rest of the body, so a client still sending it gets this answer (not a broken pipe).
            too_large = PayloadTooLarge(f"the request body is {declared} bytes, more than the {limit} accepted")
            extra = CLOSE if expects_continue(scope) else None
            await refuse(scope, send, self.state.serving.recorder, describe(too_large), time.monotonic(), extra)
            return False
        refusal = self.refusal(route, take=True)
        if refusal is not None:
            await self._refuse(scope, send, refusal, time.monotonic())
            return False
        return True

    def declared_over_limit(self, scope: Scope) -> int | None:
        """The Content-Length the request declares when it is over the body limit (413 first), else None."""
        declared = _declared_length(scope)
        return declared if declared is not None and declared > self.state.config.limits.max_body_bytes else None

    def refusal(self, route: ClassifyRoute, *, take: bool) -> Overloaded | None:
        """Why a request to `route` is refused now (counted), or None: admitted, holding a place
        until `release` when `take`, else only found admissible (early_refusal.py asks so)."""
        gate = self.gate
        model = target_model(self.state.serving.registry, route)
        # A full queue refuses here, before the body, unless a fallback model may answer instead
        # (asked only then: finding the fallback reads the model's knobs, ~0.1 ms).
        refusal = None
        if model is not None:
            refusal = queue_refusal(model)
            if refusal is not None and self.state.serving.fallbacks.covers(model):
                refusal = None
        if refusal is not None:
            gate.refused_queue_full += 1
            return refusal
        if gate.requests.try_take() if take else not gate.requests.refuses():
            return None
        return bound_refusal("classification requests", gate.requests)

    def release(self) -> None:
        """An admitted request has answered."""
        self.gate.requests.release()
        self.gate.pacer.completed_one()

    async def _refuse(self, scope: Scope, send: Send, refusal: Overloaded, started: float) -> None:
        wait_s = self.gate.pacer.delay()
        if wait_s:
            await asyncio.sleep(wait_s)
        extra = CLOSE if expects_continue(scope) else None
        await refuse(scope, send, self.state.serving.recorder, describe(refusal), started, extra)

    def receive_in_time(self, receive: Receive) -> Receive:
        """`receive`, failing with RequestTimeout (raised into the route, which records and answers it)
        when the body is not complete `body_read_timeout_s` after the headers."""
        gate = self.gate
        limit_s = gate.body_read_timeout_s

        def timed_out() -> RequestTimeout:
            gate.body_timeouts += 1
            return RequestTimeout(f"the request body was not complete within {limit_s:g} s", headers=CLOSE)

        return receive_by(receive, asyncio.get_running_loop().time() + limit_s, timed_out)


class AdmissionMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        super().__init__(app)
        self.admission = admission

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = classify_route(scope) if scope.get("method") == "POST" else None
        if route is None:  # not a classification (another method gets its 405 from the router)
            await self.app(scope, receive, send)
            return
        admission = self.admission
        if not await admission.admit(scope, send, route):
            return
        try:
            await self.app(scope, admission.receive_in_time(receive), send)
        finally:
            admission.release()
