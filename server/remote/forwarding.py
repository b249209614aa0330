"""One request's trip to the upstreams: which one, with what deadline, and what to do when it fails.

Each try goes to the upstream the pool picks (see upstreams.py) with the time the request has
left as `X-Request-Timeout-Ms`, so the upstream drops the work once nobody waits for it; this
side gives up `BACKSTOP_S` later, should the upstream not answer at all. Classification has no
side effects on an upstream that runs without events, so a request is tried again, on another
upstream when there is one, after a connection failure (the circuit breaker counts those) or a
503/429 refusal (that upstream is passed over until its Retry-After). Every other answer is the
client's: a 4xx or 504 as the upstream wrote it, any other 5xx as 502 `upstream_error`, and
bytes that are not an HTTP answer (malformed, or past the client's size bounds) as 502
`invalid_answer`, not retried (a broken upstream or proxy would answer the same again).

Tries after a connection failure are safe here because the upstreams run without events: a
request an upstream had started on and lost is classified again elsewhere and recorded once, by
the web tier. An upstream that recorded events would record such a request twice.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from batchserve.client.pooled_http import BadAnswer, ConnectFailed, ConnectionLost, UpstreamClient
from batchserve.server.remote.errors import DEADLINE, invalid_answer, refused_key, unavailable, upstream_failed
from batchserve.server.remote.health import refusal_text
from batchserve.server.remote.upstreams import Upstream, UpstreamPool
from batchserve.server.remote.wire import AnswerError, Outbound, decode_answer, whole_error
from batchserve.serving.classifier import Deadline
from batchserve.serving.errors import ErrorInfo

log = logging.getLogger("batchserve.remote")
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
BACKSTOP_S = 0.2  # past the deadline passed on, this side stops waiting for an upstream that never answers
MAX_PAUSE_S = 30.0  # the longest Retry-After honoured (a larger one is capped, not trusted blindly)
RETRIED_STATUSES = (503, 429)


@dataclass(frozen=True)
class ForwardSettings:
    attempts: int  # tries in all, each on another upstream while there is one
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


class _Malformed(Exception):
    pass


async def forward(clients: Mapping[Upstream, UpstreamClient], pool: UpstreamPool, outbound: Outbound, name: str,
                  version: int, deadline: Deadline, headers: str, settings: ForwardSettings) -> Reply | ErrorInfo:
    """The answer to `outbound` from the first upstream that gives one, or the error that ends it.
    `headers`: the header lines every try carries, each ending in CRLF (printable ASCII)."""
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
            reply = await _send(clients[upstream], upstream, outbound, budget_s, headers, settings)
        except _ConnectionLost as exc:
            last = unavailable(f"the connection to {upstream.url} failed ({exc})", pool.check_interval_s)
            continue
        except _Malformed as exc:
            log.warning("upstream %s sent something else than an HTTP answer: %s", upstream.url, exc)
            return invalid_answer(upstream.url, str(exc))
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


async def _send(client: UpstreamClient, upstream: Upstream, outbound: Outbound, budget_s: float | None,
                base_headers: str, settings: ForwardSettings) -> Reply:
    """One try. Raises _ConnectionLost (counted by the breaker), _Malformed, or TimeoutError (the
    deadline passed)."""
    headers = base_headers
    if outbound.content_type is not None:  # else none at all: the upstream sniffs the bytes, as it would here
        headers += f"Content-Type: {outbound.content_type}\r\n"
    if budget_s is not None:
        headers += f"{TIMEOUT_HEADER}: {max(1, math.floor(budget_s * 1000.0))}\r\n"
    wait_s = (budget_s if budget_s is not None else settings.no_deadline_s) + BACKSTOP_S
    breaker = upstream.breaker
    upstream.outstanding += outbound.images
    upstream.sent_since_check = True
    try:
        answer = await client.request("POST", outbound.path_and_query, body=outbound.body, headers=headers,
                                      timeout_s=wait_s)
    except (ConnectFailed, ConnectionLost) as exc:  # refused, reset, closed mid-answer, no connection in time
        breaker.failed()
        if breaker.state == "open":
            log.warning("upstream %s: circuit open after %d connection failures (%s)", upstream.url,
                        breaker.failures, exc)
        raise _ConnectionLost(str(exc)) from exc
    except BadAnswer as exc:
        breaker.undecided()  # it answers, wrongly: a bug or a proxy, not a connection to give up on
        raise _Malformed(str(exc)) from exc
    except BaseException:
        breaker.undecided()  # the deadline passed, or cancelled (the client went away): says nothing of the upstream
        raise
    finally:
        upstream.outstanding -= outbound.images
    breaker.succeeded()
    retry_after = answer.headers.get("retry-after")
    return Reply(upstream.url, answer.status, answer.body, {"Retry-After": retry_after} if retry_after else {})


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
