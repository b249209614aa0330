"""Signed S3 and SQS requests on a short path: a SigV4 signer that signs as botocore's does
(jobs/sigv4.py) and a small pooled HTTP/1.1 client (client/pooled_http.py), instead of
aiobotocore's whole pipeline.

The calls a queue-mode process makes for every image (jobs/s3_objects.py, jobs/sqs_calls.py) cost
about 1.4-1.9 ms of CPU each through aiobotocore on the two-core machine of docs/queue-mode.md
(request serialisation, endpoint rules, event hooks, the response parser, aiohttp), about 0.3 ms
here. What this keeps of aiobotocore's behaviour:
- **Who**: the credentials of the session's standard chain, refreshed as aiobotocore refreshes
  them; a process with none, or one whose environment names an HTTP proxy for the endpoint, keeps
  every call on aiobotocore (`usable`).
- **Failures**: as botocore's standard retry mode, up to 3 attempts of a call that failed for the
  moment (no connection, a timeout, a 5xx, throttling: jobs/aws_errors.py), with jittered
  exponential backoff; what still fails is raised as botocore raises it (`ClientError` with the
  service's error code, `EndpointConnectionError`, `ConnectionClosedError`, `ReadTimeoutError`).
- **Timeouts**: a connection within CONNECT_TIMEOUT_S; an answer within READ_TIMEOUT_S (plus a
  long poll's wait).
- **TLS**: verified against AWS_CA_BUNDLE when set, else the system's CAs.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from batchserve.client.pooled_http import (
    BadAnswer,
    ClientSettings,
    ConnectFailed,
    ConnectionLost,
    HttpAnswer,
    UpstreamClient,
    tls_context,
)
from batchserve.jobs.aws_errors import CONNECT_TIMEOUT_S, is_unavailable
from batchserve.jobs.sigv4 import SigV4Signer, signable

T = TypeVar("T")

MAX_ATTEMPTS = 3  # botocore's standard retry mode
MAX_BACKOFF_S = 20.0


class SignedClient:
    """Requests to one service (`s3`, `sqs`) in one region, each signed with SigV4, over a pool of
    keep-alive connections per host."""

    def __init__(self, service: str, region: str, credentials: Any, *, connections: int,
                 max_body_bytes: int = 16 * 1024 * 1024) -> None:
        self.service = service
        self.region = region
        self.credentials = credentials  # aiobotocore's (get_frozen_credentials is a coroutine)
        self._settings = ClientSettings(connections=connections, connect_timeout_s=CONNECT_TIMEOUT_S,
                                        max_body_bytes=max_body_bytes)
        self._signer = S3SigV4Auth if service == "s3" else SigV4Auth
        self._sigv4 = SigV4Signer(service, region)
        self._pools: dict[str, UpstreamClient] = {}

    @staticmethod
    def usable(credentials: Any, endpoint_url: str) -> bool:
        return credentials is not None and not _behind_proxy(endpoint_url)

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()

    async def request(self, method: str, base: str, path: str, headers: dict[str, str], body: bytes,
                      timeout_s: float) -> HttpAnswer:
        """One attempt: `method` `base``path` (base: scheme://authority; path already percent-encoded),
        signed, within `timeout_s`. Transport failures are raised as botocore's exceptions."""
        pool = self._pools.get(base)
        if pool is None:
            pool = self._pools[base] = UpstreamClient(base, self._settings, ssl_context=_tls(base))
        signed = await self._sign(method, base + path, headers, body)
        try:
            return await pool.request(method, path, timeout_s=timeout_s, body=body, headers=signed)
        except ConnectFailed as exc:
            raise EndpointConnectionError(endpoint_url=base, error=exc) from None
        except (ConnectionLost, BadAnswer) as exc:
            raise ConnectionClosedError(endpoint_url=base + path, error=exc) from None
        except TimeoutError:
            raise ReadTimeoutError(endpoint_url=base + path, error=f"no answer within {timeout_s:g} s") from None

    async def _sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> str:
        """The request's header lines, its SigV4 signature among them."""
        frozen = await self.credentials.get_frozen_credentials()
        if signable(url):  # every call the short path makes today; botocore's signer would take 5x longer
            return self._sigv4.header_lines(method, url, headers, body, frozen.access_key, frozen.secret_key,
                                            frozen.token)
        request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
        self._signer(frozen, self.service, self.region).add_auth(request)
        return "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())


async def with_retries(attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()`, tried up to MAX_ATTEMPTS times while it fails for the moment."""
    for number in range(1, MAX_ATTEMPTS + 1):
        try:
            return await attempt()
        except Exception as exc:
            if number == MAX_ATTEMPTS or not is_unavailable(exc):
                raise
        await asyncio.sleep(random.random() * min(MAX_BACKOFF_S, 2.0 ** number))
    raise AssertionError("unreachable: the last attempt returns or raises")


def _tls(base: str) -> ssl.SSLContext | None:
    if not base.startswith("https://"):
        return None
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if not bundle:
        return tls_context()
    context = ssl.create_default_context(cafile=bundle)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _behind_proxy(url: str) -> bool:
    """Whether the environment sends requests to `url` through a proxy (which this path does not speak)."""
    parts = urlsplit(url)
    return parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname or "")
