"""What S3 and SQS failures mean, and how long a call may take.

botocore retries a failed call a few times itself; what still fails is sorted here into "missing"
(the object or queue is not there: answer the request with that) and "unavailable" (S3 or SQS
cannot be reached or failed on its side: wait and try again, keeping the message).
"""

from __future__ import annotations

import asyncio

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

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
