"""S3 and SQS clients for queue mode, and what their errors mean.

Clients are aioboto3's (aiobotocore underneath): every call is a coroutine on the event loop.
botocore retries a failed call a few times itself; what still fails is sorted here into "missing"
(the object or queue is not there: answer the request with that) and "unavailable" (S3 or SQS
cannot be reached or failed on its side: wait and try again, keeping the message).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from batchserve.jobs.config import MAX_WAIT_TIME_S, QueueLocation

# Codes that say an object, bucket or queue does not exist.
_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue"}
# Codes of a service that is busy or failing on its side (besides any 5xx status).
_TRANSIENT = {"Throttling", "ThrottlingException", "RequestThrottled", "SlowDown", "RequestTimeout",
              "ServiceUnavailable", "InternalError", "InternalFailure", "RequestTimeTooSkewed"}
CONNECT_TIMEOUT_S = 5
# Seconds without a byte from S3 or SQS before botocore gives up on an attempt; a long poll gets its
# wait on top.
READ_TIMEOUT_S = 10


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def is_missing(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) in _MISSING


def is_unavailable(exc: BaseException) -> bool:
    """True for failures that may pass: no connection, a timeout, throttling, a 5xx."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in _TRANSIENT or (isinstance(status, int) and status >= 500)
    return isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError | asyncio.TimeoutError)


@dataclass
class AwsClients:
    """The two clients a queue-mode process talks through."""

    s3: Any
    sqs: Any


@contextlib.asynccontextmanager
async def connect(config: QueueLocation, *, connections: int = 10,
                  environ: Mapping[str, str] = os.environ) -> AsyncIterator[AwsClients]:
    """S3 and SQS clients for `config`'s endpoint and region, with `connections` pooled connections
    each (a long poll holds one for its whole wait)."""
    endpoint = config.endpoint_url(environ)
    common = {"max_pool_connections": connections, "connect_timeout": CONNECT_TIMEOUT_S,
              "retries": {"mode": "standard", "max_attempts": 3}}
    # Path-style addressing: a custom endpoint (moto, MinIO) has no per-bucket host names.
    s3_config = AioConfig(read_timeout=READ_TIMEOUT_S, s3={"addressing_style": "path" if endpoint else "auto"},
                          **common)
    sqs_config = AioConfig(read_timeout=MAX_WAIT_TIME_S + READ_TIMEOUT_S, **common)  # the longest poll
    session = aioboto3.Session()
    where: dict[str, Any] = {"endpoint_url": endpoint, "region_name": config.region(environ)}
    async with session.client("s3", config=s3_config, **where) as s3, \
            session.client("sqs", config=sqs_config, **where) as sqs:
        yield AwsClients(s3=s3, sqs=sqs)
