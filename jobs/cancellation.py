"""Whether a job was cancelled, as a worker checks before it reads a job image.

The answer is the manifest object's metadata (`x-amz-meta-job-status`, written in the same PUT as
the manifest): a HEAD, never a read of a manifest of thousands of inputs. Answers are kept per job
for CHECK_TTL_S, so the images of one job that arrive together cost one HEAD; concurrent checks of
one job share it. A cancelled job stays cancelled, so that answer is kept until evicted. A job
without a manifest (a message sent by hand, an old job) is not cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from botocore.exceptions import ClientError

from batchserve.jobs.aws import AwsClients, is_missing
from batchserve.jobs.backoff import retrying
from batchserve.jobs.config import ResourceNames
from batchserve.jobs.job_manifest import CANCELLED, STATUS_METADATA, manifest_key

log = logging.getLogger("batchserve.worker")

CHECK_TTL_S = 5.0
MAX_REMEMBERED_JOBS = 4096


class CancelledJobs:
    def __init__(self, aws: AwsClients, names: ResourceNames, keep_trying: Callable[[], bool],
                 ttl_s: float = CHECK_TTL_S) -> None:
        self.aws = aws
        self.bucket = names.output_bucket
        self.keep_trying = keep_trying
        self.ttl_s = ttl_s
        self._known: OrderedDict[str, tuple[float, bool]] = OrderedDict()  # job id -> (checked at, cancelled)
        self._checking: dict[str, asyncio.Future[bool]] = {}

    async def cancelled(self, job_id: str) -> bool:
        known = self._known.get(job_id)
        if known is not None and (known[1] or time.monotonic() - known[0] < self.ttl_s):
            return known[1]
        checking = self._checking.get(job_id)
        if checking is None:
            checking = self._checking[job_id] = asyncio.ensure_future(self._check(job_id))
            checking.add_done_callback(lambda done: self._checked(job_id, done))
        return await asyncio.shield(checking)

    def _checked(self, job_id: str, done: asyncio.Future[bool]) -> None:
        self._checking.pop(job_id, None)
        if not done.cancelled():
            done.exception()  # retrieved: a failure reaches the handlers that await it, none is logged twice

    async def _check(self, job_id: str) -> bool:
        key = manifest_key(job_id)
        try:
            head = await retrying(lambda: self.aws.s3.head_object(Bucket=self.bucket, Key=key),
                                  f"checking s3://{self.bucket}/{key}", log, self.keep_trying)
        except ClientError as exc:
            if not is_missing(exc):
                raise
            cancelled = False
        else:
            cancelled = head.get("Metadata", {}).get(STATUS_METADATA) == CANCELLED
        self._known[job_id] = (time.monotonic(), cancelled)
        self._known.move_to_end(job_id)
        while len(self._known) > MAX_REMEMBERED_JOBS:
            self._known.popitem(last=False)
        return cancelled
