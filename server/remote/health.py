"""Checking the upstreams: /readyz decides who is in rotation, /v1/models what each one serves.

Checks are passive while nothing happens: an idle web tier sends its upstreams nothing, so a
backend that scales to zero when nobody calls it (Cloud Run) can. Every `interval_s` an upstream
is checked only when it needs it: it is out of rotation (to see it come back), its circuit is not
closed (connection failures seen on real requests: is it gone?), or a request went to it since
its last check (so a hung or draining upstream is noticed while requests flow, and the catalog
follows its models). An upstream that fails its /readyz, or cannot be reached, leaves the
rotation at once; one that passes again comes back with its circuit closed. Its /v1/models
(which needs the classify scope under `--auth required`) is read when it enters the rotation and
at a check at least `listing_refresh_s` after the last reading; a refused key keeps the upstream
out, said once at ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import msgspec

from batchserve.client.pooled_http import BadAnswer, ConnectFailed, ConnectionLost, UpstreamClient
from batchserve.server.remote.listing import ListingError, decode_models
from batchserve.server.remote.upstreams import Upstream, UpstreamPool

log = logging.getLogger("batchserve.remote")
LISTING_REFRESH_S = 5.0
CHECK_TIMEOUT_S = 2.0  # an upstream that cannot answer /readyz within it is in no state to classify


class _Readiness(msgspec.Struct):
    status: str = "?"


class _Error(msgspec.Struct):
    message: str = ""
    code: str = ""


class _ErrorAnswer(msgspec.Struct):
    error: _Error | None = None


def refusal_text(status: int, body: bytes) -> str:
    """What a batchserve error answer says, else the start of the body."""
    try:
        error = msgspec.json.decode(body, type=_ErrorAnswer).error
    except msgspec.DecodeError:
        error = None
    if error is not None:
        return f"{status} {error.code}: {error.message}"
    return f"{status}: {body[:120].decode('utf-8', 'replace')!r}"


class OutOfRotation(Exception):
    """Why an upstream cannot take requests now."""

    def __init__(self, problem: str, *, key_refused: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.key_refused = key_refused


def needs_check(upstream: Upstream) -> bool:
    """Whether the periodic round checks it (see the module docstring)."""
    return not upstream.in_rotation or upstream.sent_since_check or upstream.breaker.state != "closed"


class HealthChecker:
    def __init__(self, pool: UpstreamPool, clients: Mapping[Upstream, UpstreamClient], *, interval_s: float,
                 on_change: Callable[[], None], listing_refresh_s: float = LISTING_REFRESH_S) -> None:
        self.pool = pool
        self.clients = clients  # its own, one connection each: checks never queue behind requests
        self.interval_s = interval_s
        self.listing_refresh_s = listing_refresh_s
        self.on_change = on_change

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.check_all(only_needed=True)

    async def check_all(self, *, only_needed: bool = False) -> None:
        due = [u for u in self.pool.upstreams if not only_needed or needs_check(u)]
        if not due:
            return
        for upstream in due:
            upstream.sent_since_check = False
        changed = await asyncio.gather(*(self.check(u) for u in due))
        if any(changed):
            self.on_change()

    async def check(self, upstream: Upstream) -> bool:
        """Checks one upstream; True when its rotation or its models changed."""
        try:
            await self._get(upstream, "/readyz", readiness=True)
            answer = None
            due = upstream.listed_at is None or time.monotonic() - upstream.listed_at >= self.listing_refresh_s
            if not upstream.in_rotation or due:
                try:
                    answer = decode_models(await self._get(upstream, "/v1/models", readiness=False))
                except ListingError as exc:
                    raise OutOfRotation(str(exc)) from None
        except OutOfRotation as out:
            return self._out(upstream, out)
        changed = False
        if answer is not None:
            models = {entry.key: entry for entry in answer.models}
            changed = models != upstream.models or answer.default_model != upstream.default_model
            upstream.models, upstream.default_model = models, answer.default_model
            upstream.listed_at = time.monotonic()
        if upstream.in_rotation and upstream.breaker.state != "closed":
            upstream.breaker.reset()  # connection failures, but its /readyz answers: let requests try again
            changed = True
        elif not upstream.in_rotation:
            upstream.in_rotation, upstream.problem = True, None
            upstream.breaker.reset()
            log.info("upstream %s is in rotation (serves %s)", upstream.url,
                     ", ".join(f"{n} v{v}" for n, v in sorted(upstream.models)) or "no model")
            changed = True
        return changed

    async def _get(self, upstream: Upstream, path: str, *, readiness: bool) -> bytes:
        try:
            answer = await self.clients[upstream].request("GET", path, timeout_s=CHECK_TIMEOUT_S)
        except TimeoutError:
            raise OutOfRotation(f"{path} did not answer within {CHECK_TIMEOUT_S:g} s") from None
        except (ConnectFailed, ConnectionLost) as exc:
            raise OutOfRotation(f"unreachable ({type(exc).__name__}: {exc})") from None
        except BadAnswer as exc:
            raise OutOfRotation(f"{path} answered something else than HTTP: {exc}") from None
        status, body = answer.status, answer.body
        if status in (401, 403):
            raise OutOfRotation(f"it refuses this server's --upstream-api-key on {path} ({refusal_text(status, body)})",
                                key_refused=True)
        if status != 200:
            what = _readiness_status(body) if readiness else refusal_text(status, body)
            raise OutOfRotation(f"{path} answered {status} ({what})" if readiness else f"{path} answered {what}")
        return body

    def _out(self, upstream: Upstream, out: OutOfRotation) -> bool:
        changed = upstream.in_rotation
        if upstream.in_rotation or upstream.problem != out.problem:
            level = logging.ERROR if out.key_refused else logging.WARNING
            log.log(level, "upstream %s is out of rotation: %s", upstream.url, out.problem)
        upstream.in_rotation, upstream.problem = False, out.problem
        return changed


def _readiness_status(body: bytes) -> str:
    try:
        return msgspec.json.decode(body, type=_Readiness).status
    except msgspec.DecodeError:
        return "not batchserve's readiness answer"
