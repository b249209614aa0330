"""A deployment's buckets and queues: create what is missing, report, move dead letters back, remove.

Every operation is idempotent: `up` twice creates once and converges the settings of what
exists; `down` twice removes once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from batchserve.jobs.aws import AwsClients, error_code, is_missing
from batchserve.jobs.config import (
    MAX_RECEIVE_COUNT,
    MAX_RECEIVE_MESSAGES,
    MAX_RETENTION_S,
    QueueConfig,
    ResourceNames,
)
from batchserve.jobs.errors import QueueModeSetupError

log = logging.getLogger("batchserve.queue")

SYNC_LIFECYCLE_RULE = "expire-sync-results"
_DEPTH_ATTRIBUTES = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                     "ApproximateNumberOfMessagesDelayed"]


@dataclass
class Changes:
    """What `up` or `down` did, by resource name."""

    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class QueueDepth:
    name: str
    visible: int  # waiting to be received
    in_flight: int  # received, neither deleted nor visible again yet
    delayed: int


async def queue_url(aws: AwsClients, name: str) -> str | None:
    """The URL of queue `name`, or None when it does not exist."""
    try:
        answer = await aws.sqs.get_queue_url(QueueName=name)
    except ClientError as exc:
        if is_missing(exc):
            return None
        raise
    return str(answer["QueueUrl"])


async def up(aws: AwsClients, config: QueueConfig) -> Changes:
    """Create the missing buckets and queues; set retention, the redrive policy and the lifecycle rule."""
    names = config.names
    changes = Changes()
    for bucket in names.buckets:
        await _ensure_bucket(aws, bucket, config.region(), changes)
    await _expire_sync_results(aws, names.output_bucket, config.sync_results_days)
    dlq_url = await _ensure_queue(aws, names.dead_letters, {"MessageRetentionPeriod": str(MAX_RETENTION_S)}, changes)
    dlq_arn = (await aws.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"]))["Attributes"][
        "QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)})
    common = {"MessageRetentionPeriod": str(config.retention_s), "VisibilityTimeout": str(config.visibility_timeout_s)}
    await _ensure_queue(aws, names.requests, {**common, "RedrivePolicy": redrive}, changes)
    await _ensure_queue(aws, names.responses, common, changes)
    return changes


async def down(aws: AwsClients, names: ResourceNames, *, keep_buckets: bool = False) -> Changes:
    """Remove the queues (reply queues of web instances included) and, unless kept, empty and remove the buckets."""
    changes = Changes()
    for name in [*names.queues, *await reply_queues(aws, names)]:
        url = await queue_url(aws, name)
        if url is None:
            changes.absent.append(name)
            continue
        await aws.sqs.delete_queue(QueueUrl=url)
        changes.removed.append(name)
    if not keep_buckets:
        for bucket in names.buckets:
            if await _delete_bucket(aws, bucket):
                changes.removed.append(bucket)
            else:
                changes.absent.append(bucket)
    return changes


async def reply_queues(aws: AwsClients, names: ResourceNames) -> list[str]:
    """Names of the reply queues web instances created (left behind by any that were killed)."""
    found: list[str] = []
    pages = aws.sqs.get_paginator("list_queues").paginate(QueueNamePrefix=names.reply_prefix)
    async for page in pages:
        found += [url.rstrip("/").rsplit("/", 1)[-1] for url in page.get("QueueUrls", [])]
    return sorted(found)


async def depths(aws: AwsClients, names: ResourceNames) -> list[QueueDepth]:
    """Every queue of the deployment that exists, with its message counts (SQS's approximations)."""
    found = []
    for name in [*names.queues, *await reply_queues(aws, names)]:
        url = await queue_url(aws, name)
        if url is None:
            continue
        attributes = (await aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=_DEPTH_ATTRIBUTES))[
            "Attributes"]
        visible, in_flight, delayed = (int(attributes.get(a, 0)) for a in _DEPTH_ATTRIBUTES)
        found.append(QueueDepth(name, visible, in_flight, delayed))
    return found


async def redrive(aws: AwsClients, names: ResourceNames, *, limit: int | None = None) -> int:
    """Move messages from the dead-letter queue back to the request queue; returns how many moved.
    A message is sent again before it is deleted from the dead-letter queue, so none is lost."""
    dlq = await _require(aws, names.dead_letters)
    requests = await _require(aws, names.requests)
    moved = 0
    while limit is None or moved < limit:
        want = MAX_RECEIVE_MESSAGES if limit is None else min(MAX_RECEIVE_MESSAGES, limit - moved)
        answer = await aws.sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=want, WaitTimeSeconds=1,
                                               VisibilityTimeout=60, MessageAttributeNames=["All"])
        messages = answer.get("Messages", [])
        if not messages:
            break
        entries = []
        for i, message in enumerate(messages):
            entry = {"Id": str(i), "MessageBody": message["Body"]}
            if message.get("MessageAttributes"):
                entry["MessageAttributes"] = message["MessageAttributes"]
            entries.append(entry)
        sent = await aws.sqs.send_message_batch(QueueUrl=requests, Entries=entries)
        ok = {item["Id"] for item in sent.get("Successful", [])}
        for failure in sent.get("Failed", []):
            log.warning("could not move dead letter %s back: %s", failure.get("Id"), failure.get("Message"))
        receipts = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages) if str(i) in ok]
        if receipts:
            await aws.sqs.delete_message_batch(QueueUrl=dlq, Entries=receipts)
        moved += len(receipts)
        if not receipts:
            break
    return moved


async def _require(aws: AwsClients, name: str) -> str:
    url = await queue_url(aws, name)
    if url is None:
        raise QueueModeSetupError(f"queue {name} does not exist; run `batchserve queue up`")
    return url


async def _ensure_bucket(aws: AwsClients, bucket: str, region: str, changes: Changes) -> None:
    try:
        await aws.s3.head_bucket(Bucket=bucket)
        changes.kept.append(bucket)
        return
    except ClientError as exc:
        if not is_missing(exc):
            raise
    arguments: dict[str, object] = {"Bucket": bucket}
    if region != "us-east-1":  # S3 refuses a location constraint naming its default region
        arguments["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        await aws.s3.create_bucket(**arguments)
    except ClientError as exc:
        if error_code(exc) != "BucketAlreadyOwnedByYou":
            raise
    changes.created.append(bucket)


async def _expire_sync_results(aws: AwsClients, bucket: str, days: int) -> None:
    """Synchronous results were answered already; their objects only serve redeliveries and debugging."""
    rule = {"ID": SYNC_LIFECYCLE_RULE, "Filter": {"Prefix": "sync/"}, "Status": "Enabled",
            "Expiration": {"Days": days}}
    await aws.s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [rule]})


async def _ensure_queue(aws: AwsClients, name: str, attributes: dict[str, str], changes: Changes) -> str:
    url = await queue_url(aws, name)
    if url is None:
        url = str((await aws.sqs.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"])
        changes.created.append(name)
    else:  # converge: a changed retention or timeout applies to the existing queue too
        await aws.sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        changes.kept.append(name)
    return url


async def _delete_bucket(aws: AwsClients, bucket: str) -> bool:
    """Empty and delete `bucket`; False when it did not exist."""
    try:
        pages = aws.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        async for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                await aws.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        await aws.s3.delete_bucket(Bucket=bucket)
    except ClientError as exc:
        if is_missing(exc):
            return False
        raise
    return True
