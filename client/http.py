"""JSON requests to a running server, and the one way its error answers are read.

Standard library only (urllib), so the commands built on it need nothing beyond the package. The
URL always names the operator's own server, so requests never go through a proxy from the
environment (HTTP_PROXY and the like): a proxy would turn "connection refused" into its own error
page, or send a local address out of the machine.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

__all__ = ["API_KEY_ENV", "HttpError", "NotJson", "Unreachable", "api_key_headers", "request_json", "resolve_api_key"]

# Every tool that talks to a server takes --api-key, or this variable.
API_KEY_ENV = "BATCHSERVE_API_KEY"

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_EXCERPT = 500  # characters of a body that is not a JSON error, enough to recognise a proxy's or gateway's page


class HttpError(Exception):
    """No usable answer: raised as such for an error status, as a subclass for the other cases.

    ``status`` is the HTTP status (None when nothing answered). ``code`` is the machine-readable
    code of a /v1 error (``{"error": {"code", "message"}}``); /v2 errors (``{"error": "..."}``) and
    bodies that are not JSON have none. ``message`` is what went wrong, fit to show to a person.
    """

    def __init__(self, message: str, *, status: int | None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class Unreachable(HttpError):
    """No HTTP answer at all (refused, unresolvable, reset, timed out, not an http(s) URL); ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=None)


class NotJson(HttpError):
    """A success status with a body that is not JSON: something other than the server answered."""


def resolve_api_key(flag: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The key a tool sends: its --api-key flag, else BATCHSERVE_API_KEY, else none."""
    if flag:
        return flag
    return (os.environ if environ is None else environ).get(API_KEY_ENV) or None


def api_key_headers(api_key: str | None) -> dict[str, str]:
    """The header that carries an API key (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def request_json(
    url: str,
    *,
    method: str = "GET",
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Any:
    """Send ``body`` as JSON (none when it is None) and return the decoded answer; an empty answer is None.

    Raises :class:`Unreachable`, :class:`HttpError` for an error status, or :class:`NotJson`.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise Unreachable(f"{url!r} is not an http(s) URL")
    data = None if body is None else json.dumps(body).encode()
    all_headers = {"Accept": "application/json"}
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    try:
        # http(s) only, checked above.
        request = urllib.request.Request(url, data=data, headers=all_headers, method=method)  # noqa: S310
        with _OPENER.open(request, timeout=timeout) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        code, message = _error_of(exc.read())
        raise HttpError(message, status=exc.code, code=code) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        # URLError wraps the socket's error in .reason; ValueError is a malformed URL (a bad port, say).
        raise Unreachable(str(getattr(exc, "reason", exc))) from None
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise NotJson(f"the answer is not JSON: {_excerpt(raw)}", status=status) from None


def _error_of(body: bytes) -> tuple[str | None, str]:
    """(code, message) of an error answer."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message") or code
        if message:
            return (str(code) if code else None), str(message)
    elif isinstance(error, str) and error:
        return None, error
    return None, _excerpt(body)


def _excerpt(body: bytes) -> str:
    return body[:_EXCERPT].decode("utf-8", "replace").strip() or "(empty body)"
