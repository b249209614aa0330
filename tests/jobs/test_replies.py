"""Responses to one queue go out together, in batches SQS accepts: at most ten messages and
240 KiB of UTF-8 per SendMessageBatch, counted in bytes, not characters."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from batchserve.jobs.replies import MAX_BATCH_BYTES, Responder
from tests.jobs.queue_helpers import Deployment, wait_until


async def test_batches_stay_within_what_sqs_takes_counted_in_bytes(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = deployment.aws.sqs
    batches: list[list[str]] = []
    send_batch = sqs.send_message_batch

    async def recorded(**params: Any) -> Any:  # the call still goes to SQS: only its entries are noted
        batches.append([entry["MessageBody"] for entry in params["Entries"]])
        return await send_batch(**params)

    monkeypatch.setattr(sqs, "send_message_batch", recorded)
    responder = Responder(deployment.aws, deployment.names, deployment.responses_url, lambda: True)
    # 30 000 characters but 60 000 bytes each: counted as characters, eight would share a batch.
    bodies = [f'{{"n": {n}, "name": "{"é" * 30_000}"}}' for n in range(12)]
    await asyncio.gather(*(responder.send(deployment.responses_url, body) for body in bodies))

    assert sorted(b for batch in batches for b in batch) == sorted(bodies)
    assert all(len(batch) <= 10 and sum(len(b.encode()) for b in batch) <= MAX_BATCH_BYTES for batch in batches)

    async def all_arrived() -> bool:
        await deployment.receive_responses()
        return len(deployment.responses) == len(bodies)

    await wait_until(all_arrived, 30, "every response to arrive")
    assert sorted(r["n"] for r in deployment.responses) == list(range(12))


async def test_the_answers_of_one_turn_share_sends_and_a_lone_one_goes_at_once(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = deployment.aws.sqs
    batches: list[int] = []
    send_batch = sqs.send_message_batch

    async def recorded(**params: Any) -> Any:  # still sent: only the batch's size is noted
        batches.append(len(params["Entries"]))
        return await send_batch(**params)

    monkeypatch.setattr(sqs, "send_message_batch", recorded)
    responder = Responder(deployment.aws, deployment.names, deployment.responses_url, lambda: True)
    url = deployment.responses_url
    await responder.send(url, '{"n": -1}')
    assert batches == [1]
    # A model batch's answers come in one turn of the loop: two sends start at once, each with ten,
    # and the rest follows in a third (none goes out alone ahead of the others).
    await asyncio.gather(*(responder.send(url, f'{{"n": {n}}}') for n in range(25)))
    assert sorted(batches[1:]) == [5, 10, 10]

    async def all_arrived() -> bool:
        await deployment.receive_responses()
        return len(deployment.responses) == 26

    await wait_until(all_arrived, 30, "every response to arrive")
    assert sorted(r["n"] for r in deployment.responses) == list(range(-1, 25))


async def test_messages_for_a_new_reply_queue_find_it_with_one_lookup(
        deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    sqs = deployment.aws.sqs
    reply = f"{deployment.names.reply_prefix}web7"
    created = (await sqs.create_queue(QueueName=reply))["QueueUrl"]
    lookups: list[str] = []
    get_queue_url = sqs.get_queue_url

    async def recorded(**params: Any) -> Any:  # still asks SQS: only the call is noted
        lookups.append(params["QueueName"])
        return await get_queue_url(**params)

    monkeypatch.setattr(sqs, "get_queue_url", recorded)
    responder = Responder(deployment.aws, deployment.names, deployment.responses_url, lambda: True)
    # The first messages for a new web instance arrive together, as ten from one receive do.
    found = await asyncio.gather(*(responder.destination(reply) for _ in range(10)))
    assert found == [created] * 10
    assert await responder.destination(created) == created  # by URL too, from what was found
    absent = f"{deployment.names.reply_prefix}gone"
    assert await asyncio.gather(*(responder.destination(absent) for _ in range(5))) == [None] * 5
    assert lookups == [reply, absent]
