"""Holdings against moto's SQS: a message delivered again while held is answered once and deleted by
its newest receipt; answered messages are deleted ten per call."""

from __future__ import annotations

from typing import Any

import pytest

from batchserve.jobs.held import DELETE_LINGER_S, HeldMessage, Holdings
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


async def test_answered_messages_are_deleted_ten_per_call_and_the_rest_once_they_have_waited(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = deployment.aws.sqs
    calls: list[list[str]] = []
    delete_batch = sqs.delete_message_batch

    async def recorded(**params: Any) -> Any:  # still deleted: only the receipts are noted
        calls.append([entry["ReceiptHandle"] for entry in params["Entries"]])
        return await delete_batch(**params)

    monkeypatch.setattr(sqs, "delete_message_batch", recorded)
    await deployment.send_all([deployment.request("a.jpg") for _ in range(13)])
    holdings = Holdings(deployment.aws, deployment.requests_url, visibility_timeout_s=30, settled_total=lambda: 13)
    received: list[HeldMessage] = []
    while len(received) < 13:
        answer = await sqs.receive_message(QueueUrl=deployment.requests_url, MaxNumberOfMessages=10,
                                           WaitTimeSeconds=1, VisibilityTimeout=30)
        received += [HeldMessage.from_sqs(m) for m in answer.get("Messages", [])]
    for number, message in enumerate(received, start=1):
        assert holdings.add(message)
        holdings.answered(message, event_number=number)

    await holdings.delete_settled()  # ten make a call; three would make a call of their own
    assert [len(call) for call in calls] == [10] and len(holdings) == 3
    assert set(calls[0]) == {m.receipt_handle for m in received[:10]}  # the longest answered went first
    assert await deployment.depth() == (0, 3)

    await holdings.delete_settled()
    assert len(calls) == 1  # still waiting for company
    for message in received[10:]:  # ...until one of them has waited DELETE_LINGER_S
        message.answered_at -= DELETE_LINGER_S
    await holdings.delete_settled()
    assert [len(call) for call in calls] == [10, 3] and len(holdings) == 0
    assert holdings.deleted_total == 13 and await deployment.depth() == (0, 0)
