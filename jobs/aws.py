"""S3 and SQS clients for queue mode.

Clients are aioboto3's (aiobotocore underneath): every call is a coroutine on the event loop. The
calls made for every image take a shorter path of their own (jobs/short_path.py), with the same
endpoint, region and credentials: reading an image and writing a result or an upload
(`objects`, jobs/s3_objects.py), sending, receiving and deleting messages (`sqs`'s message calls,
jobs/sqs_calls.py). What failures mean is jobs/aws_errors.py's to say.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from batchserve.jobs.aws_errors import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, error_code, is_missing, is_unavailable
from batchserve.jobs.config import MAX_WAIT_TIME_S, QueueLocation
from batchserve.jobs.s3_objects import ObjectStore
from batchserve.jobs.sqs_calls import Sqs

__all__ = ["AwsClients", "connect", "error_code", "is_missing", "is_unavailable"]


@dataclass
class AwsClients:
    """The clients a queue-mode process talks through."""

    s3: Any  # aiobotocore's
    sqs: Sqs  # aiobotocore's, its message calls on the short path
    objects: ObjectStore  # single-object reads and writes, on the short path


@contextlib.asynccontextmanager
async def connect(config: QueueLocation, *, connections: int = 10,
                  environ: Mapping[str, str] = os.environ) -> AsyncIterator[AwsClients]:
    """S3 and SQS clients for `config`'s endpoint and region, with `connections` pooled connections
    each (a long poll holds one for its whole wait)."""
    # Imported here: they take a third of a second, which a server not in queue mode need not pay.
    import aioboto3
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession

    endpoint = config.endpoint_url(environ)
    common = {"max_pool_connections": connections, "connect_timeout": CONNECT_TIMEOUT_S,
              "retries": {"mode": "standard", "max_attempts": 3}}
    # Path-style addressing: a custom endpoint (moto, MinIO) has no per-bucket host names.
    s3_config = AioConfig(read_timeout=READ_TIMEOUT_S, s3={"addressing_style": "path" if endpoint else "auto"},
                          **common)
    sqs_config = AioConfig(read_timeout=MAX_WAIT_TIME_S + READ_TIMEOUT_S, **common)  # the longest poll
    core = AioSession()
    session = aioboto3.Session(botocore_session=core)
    where: dict[str, Any] = {"endpoint_url": endpoint, "region_name": config.region(environ)}
    async with session.client("s3", config=s3_config, **where) as s3, \
            session.client("sqs", config=sqs_config, **where) as sqs:
        # The session keeps the credentials its clients found: the short path signs with the same.
        credentials = await core.get_credentials()
        objects = ObjectStore(s3, credentials, connections=connections)
        queues = Sqs(sqs, credentials, connections=connections)
        try:
            yield AwsClients(s3=s3, sqs=queues, objects=objects)
        finally:
            await objects.close()
            await queues.close()
