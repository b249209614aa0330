"""The errors only a web tier in front of other servers can answer (the rest are the upstream's own)."""

from __future__ import annotations

from batchserve.serving.errors import ErrorInfo, ServeError, retry_after

UPSTREAM_UNAVAILABLE = "upstream_unavailable"
UPSTREAM_ERROR = "upstream_error"
UPSTREAM_AUTH_FAILED = "upstream_auth_failed"
INVALID_ANSWER = "invalid_answer"


class UpstreamUnavailable(ServeError):
    """No upstream can take the request now (all down, out of rotation or with their circuit open)."""

    status, code = 503, UPSTREAM_UNAVAILABLE


def unavailable(reason: str, wait_s: float) -> ErrorInfo:
    return ErrorInfo(503, UPSTREAM_UNAVAILABLE, f"no upstream can classify this now: {reason}", retry_after(wait_s))


def upstream_failed(url: str, status: int, detail: str) -> ErrorInfo:
    """An upstream's 5xx other than 503 (its bug, or a proxy in front of it): the gateway's 502."""
    return ErrorInfo(502, UPSTREAM_ERROR, f"upstream {url} failed with status {status}: {detail}")


def refused_key(url: str, status: int, detail: str) -> ErrorInfo:
    """The upstream refused this server's own credentials: not the client's fault, and no 401 for it."""
    return ErrorInfo(502, UPSTREAM_AUTH_FAILED,
                     f"upstream {url} refused this server's --upstream-api-key ({status}: {detail})")


def invalid_answer(url: str, detail: str) -> ErrorInfo:
    return ErrorInfo(502, INVALID_ANSWER, f"upstream {url} sent an answer that is not batchserve's: {detail}")


DEADLINE = ErrorInfo(504, "deadline_exceeded", "no upstream answered before the request's deadline")
