"""One request's trip to the upstreams: which one, with what deadline, and what to do when it fails.

Each try goes to the upstream the pool picks (see upstreams.py) with the time the request has
left as `X-Request-Timeout-Ms`, so the upstream drops the work once nobody waits for it; this
side gives up `BACKSTOP_S` later, should the upstream not answer at all. Classification has no
side effects on an upstream that runs without events, so a request is tried again, on another
upstream when there is one, after a connection failure (the circuit breaker counts those) or a
503/429 refusal (that upstream is passed over until its Retry-After). Every other answer is the
client's: a 4xx or 504 as the upstream wrote it, any other 5xx as 502 `upstream_error`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import aiohttp

from batchserve.server.remote.errors import DEADLINE, refused_key, unavailable, upstream_failed
from batchserve.server.remote.health import refusal_text
from batchserve.server.remote.upstreams import Upstream, UpstreamPool
from batchserve.server.remote.wire import AnswerError, Outbound, decode_answer, whole_error
from batchserve.serving.classifier import Deadline
from batchserve.serving.errors import ErrorInfo

log = logging.getLogger("batchserve.remote")
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
BACKSTOP_S = 0.2  # past the deadline passed on, this side stops waiting for an upstream that never answers
MAX_PAUSE_S = 30.0  # the longest Retry-After honoured (a larger one is capped, not trusted blindly)
NO_CONTENT_TYPE = frozenset({"Content-Type"})
RETRIED_STATUSES = (503, 429)


@dataclass(frozen=True)
class ForwardSettings:
    attempts: int  # tries in all, each on another upstream while there is one
    connect_timeout_s: float
    no_deadline_s: float  # the wait for a request that has no deadline


@dataclass(frozen=True)
class Reply:
    """An upstream's answer that is the client's (2xx, 4xx, 504)."""

    url: str
    status: int
    body: bytes
    headers: dict[str, str]


class _ConnectionLost(Exception):
    pass


async def forward(session: aiohttp.ClientSession, pool: UpstreamPool, outbound: Outbound, name: str, version: int,
                  deadline: Deadline, headers: dict[str, str], settings: ForwardSettings) -> Reply | ErrorInfo:
    """The answer to `outbound` from the first upstream that gives one, or the error that ends it."""
    refused: set[Upstream] = set()
    tried: set[Upstream] = set()
    last: ErrorInfo | None = None
    for _ in range(settings.attempts):
        budget_s = None if deadline.at is None else deadline.at - time.monotonic()
        if budget_s is not None and budget_s <= 0:
            return DEADLINE
        upstream = pool.choose(name, version, refused=refused, tried=tried)
        if upstream is None:
            break
        tried.add(upstream)
        try:
            reply = await _send(session, upstream, outbound, budget_s, headers, settings)
        except _ConnectionLost as exc:
            last = unavailable(f"the connection to {upstream.url} failed ({exc})", pool.check_interval_s)
            continue
        except TimeoutError:
            return DEADLINE
        if reply.status in RETRIED_STATUSES:
            refused.add(upstream)
            upstream.paused_until = time.monotonic() + _retry_after_s(reply.headers)
            last = _refusal(reply)
            continue
        if reply.status in (401, 403):
            refused.add(upstream)
            detail = refusal_text(reply.status, reply.body)
            if upstream.in_rotation:
                log.error("upstream %s refuses this server's --upstream-api-key (%s): out of rotation",
                          upstream.url, detail)
            upstream.in_rotation, upstream.problem = False, f"it refuses this server's --upstream-api-key ({detail})"
            last = refused_key(upstream.url, reply.status, detail)
            continue
        if reply.status >= 500 and reply.status != 504:
            return upstream_failed(upstream.url, reply.status, refusal_text(reply.status, reply.body))
        return reply
    return last if last is not None else pool.unavailable(name, version)


async def _send(session: aiohttp.ClientSession, upstream: Upstream, outbound: Outbound, budget_s: float | None,
                base_headers: dict[str, str], settings: ForwardSettings) -> Reply:
    """One try. Raises _ConnectionLost (counted by the breaker) or TimeoutError (the deadline passed)."""
    headers = dict(base_headers)
    skip: frozenset[str] = frozenset()
    if outbound.content_type is None:
        skip = NO_CONTENT_TYPE  # aiohttp would say application/octet-stream; the client said nothing
    else:
        headers["Content-Type"] = outbound.content_type
    if budget_s is not None:
        headers[TIMEOUT_HEADER] = str(max(1, math.floor(budget_s * 1000.0)))
    wait_s = (budget_s if budget_s is not None else settings.no_deadline_s) + BACKSTOP_S
    timeout = aiohttp.ClientTimeout(total=wait_s, sock_connect=settings.connect_timeout_s)
    breaker = upstream.breaker
    upstream.outstanding += outbound.images
    try:
        async with session.post(upstream.url + outbound.path_and_query, data=outbound.body, headers=headers,
                                timeout=timeout, skip_auto_headers=skip) as response:
            body = await response.read()
            reply = Reply(upstream.url, response.status, body, _kept_headers(response))
    except aiohttp.ConnectionTimeoutError as exc:
        breaker.failed()
        raise _ConnectionLost(f"no connection within {settings.connect_timeout_s:g} s") from exc
    except TimeoutError:
        breaker.undecided()
        raise
    except aiohttp.ClientError as exc:  # refused, reset, closed mid-answer
        breaker.failed()
        if breaker.state == "open":
            log.warning("upstream %s: circuit open after %d connection failures (%s)", upstream.url,
                        breaker.failures, exc)
        raise _ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
    except BaseException:
        breaker.undecided()  # cancelled (the client went away): says nothing of the upstream
        raise
    finally:
        upstream.outstanding -= outbound.images
    breaker.succeeded()
    return reply


def _kept_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    retry_after = response.headers.get("Retry-After")
    return {"Retry-After": retry_after} if retry_after is not None else {}


def _retry_after_s(headers: dict[str, str]) -> float:
    try:
        seconds = float(headers.get("Retry-After", "1"))
    except ValueError:
        seconds = 1.0
    return min(MAX_PAUSE_S, seconds) if math.isfinite(seconds) and seconds > 0 else 1.0


def _refusal(reply: Reply) -> ErrorInfo:
    """A 503/429 as the client gets it when no other upstream takes the request. A 429 limits this
    server's key, not the client's: the client hears that the service is busy, not about our key."""
    if reply.status == 429:
        return unavailable(f"{reply.url} is rate limiting this server's --upstream-api-key",
                           _retry_after_s(reply.headers))
    try:
        info = whole_error(decode_answer(reply.body), reply.status, reply.headers)
    except AnswerError:
        info = None
    if info is not None:
        return info
    return unavailable(f"{reply.url} refused it ({refusal_text(reply.status, reply.body)})", 1.0)
