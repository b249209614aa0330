"""One HTTP request of a bulk run, tried again while the server says "not now".

aiohttp carries it (see batchserve.client.bulk for why). A request ends in an :class:`Answer`
(any status, once retries are spent or the status is final) or :class:`RunStopped`: nothing
answered even after the retries, or the server refused the credentials. Both of those would fail
every other image the same way, so the run stops rather than recording the same failure for each.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from batchserve.client.http import API_KEY_ENV
from batchserve.client.retry import RETRIED_STATUSES, RetryPolicy, parse_retry_after

__all__ = ["Answer", "RunStopped", "error_of", "send"]

_EXCERPT = 300  # characters of a body that is not a JSON error
_AUTH_STATUSES = frozenset({401, 403})


class RunStopped(Exception):
    """The whole run cannot go on; the message says why, fit to show to a person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes
    attempts: int

    def json(self) -> Any:
        """The decoded body, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def error_of(status: int, body: bytes) -> tuple[str, str]:
    """(code, message) of an error answer: the /v1 shape, the /v2 shape, or an excerpt of anything else."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict) and (error.get("code") or error.get("message")):
        code = str(error.get("code") or f"http_{status}")
        return code, str(error.get("message") or code)
    if isinstance(error, str) and error:
        return f"http_{status}", error
    text = body[:_EXCERPT].decode("utf-8", "replace").strip()
    return f"http_{status}", text or f"HTTP {status} with an empty body"


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    body: Callable[[], Any] | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    on_retry: Callable[[str, float], None] | None = None,
) -> Answer:
    """Send until a final answer; `body` builds the payload afresh for every try (a multipart form
    is consumed by sending it). `on_retry(reason, wait_s)` hears about each retry."""
    attempt = 0
    while True:
        attempt += 1
        retry_after: float | None = None
        try:
            async with session.request(method, url, data=None if body is None else body(), json=json_body,
                                       headers=headers, params=params) as response:
                payload = await response.read()
                if response.status in _AUTH_STATUSES:
                    code, message = error_of(response.status, payload)
                    raise RunStopped(f"the server refused the request ({response.status} {code}): {message}"
                                     f"{_key_hint(session, headers)}")
                if response.status not in RETRIED_STATUSES or not policy.should_retry(attempt):
                    return Answer(response.status, {k.lower(): v for k, v in response.headers.items()}, payload,
                                  attempt)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                reason = f"HTTP {response.status} {error_of(response.status, payload)[0]}"
        except (aiohttp.ClientError, TimeoutError) as exc:  # refused, reset, timed out, a garbled answer
            reason = _describe(exc)
            if not policy.should_retry(attempt):
                tries = "1 try" if attempt == 1 else f"{attempt} tries"
                raise RunStopped(f"no answer from {_origin(url)} after {tries}: {reason}") from None
        wait = policy.delay(attempt, retry_after)
        if on_retry is not None:
            on_retry(reason, wait)
        await asyncio.sleep(wait)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    return str(exc) or type(exc).__name__


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _key_hint(session: aiohttp.ClientSession, headers: Mapping[str, str] | None) -> str:
    if "Authorization" in session.headers or (headers and "Authorization" in headers):
        return ""
    return f" (no API key was sent: pass --api-key or set {API_KEY_ENV})"
