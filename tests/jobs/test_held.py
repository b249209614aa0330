"""Holdings against moto's SQS: a message delivered again while held is answered once and deleted by
its newest receipt."""

from __future__ import annotations

from batchserve.jobs.held import HeldMessage, Holdings
from tests.jobs.queue_helpers import Deployment


async def _receive_one(deployment: Deployment) -> HeldMessage:
    answer = await deployment.aws.sqs.receive_message(
        QueueUrl=deployment.requests_url, MaxNumberOfMessages=1, WaitTimeSeconds=1, VisibilityTimeout=0,
        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"])
    (message,) = answer["Messages"]
    return HeldMessage.from_sqs(message)


async def test_a_copy_of_a_held_message_is_held_once_and_deleted_by_its_newest_receipt(
        deployment: Deployment) -> None:
    await deployment.send(deployment.request("a.jpg"))
    # A visibility timeout of 0 lets SQS deliver the same message twice, as a standard queue may.
    first, copy = await _receive_one(deployment), await _receive_one(deployment)
    assert first.message_id == copy.message_id and first.receipt_handle != copy.receipt_handle

    holdings = Holdings(deployment.aws, deployment.requests_url, visibility_timeout_s=30, settled_total=lambda: 1)
    assert holdings.add(first) is True
    assert holdings.add(copy) is False
    assert len(holdings) == 1 and holdings.redelivered_while_held_total == 1
    assert first.receipt_handle == copy.receipt_handle and first.receive_count == 2

    holdings.answered(first, event_number=1)
    await holdings.delete_settled(all_settled=True)
    assert len(holdings) == 0 and holdings.deleted_total == 1
    assert await deployment.depth() == (0, 0)
