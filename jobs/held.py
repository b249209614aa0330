"""The messages a worker holds, from receipt until they are deleted or handed back.

While a message is held its visibility timeout is extended, so no other worker receives it while
its image waits for a batch or runs. An answered message is deleted once its event is stored or
journaled (see jobs/recording.py); one that was not answered (shutdown, a failure worth retrying)
is handed back by making it visible again. SQS calls go out in batches of up to ten.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from batchserve.jobs.aws import AwsClients, is_unavailable
from batchserve.jobs.backoff import CALL_TIMEOUT_S, Backoff
from batchserve.jobs.config import MAX_RECEIVE_MESSAGES

log = logging.getLogger("batchserve.worker")

TICK_S = 0.05
# An answered message waits this long at most for nine others to be deleted with it in one call.
DELETE_LINGER_S = 0.25
# ...and this long at most for its event to be settled: past it the writer is taken to have kept it
# (the ledger counts what the writer reports; a count it does not report must not hold a message forever).
SETTLE_WAIT_MAX_S = 10.0


@dataclass(eq=False)
class HeldMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    sent_at: datetime | None  # when SQS first took the message
    received: float = field(default_factory=time.monotonic)  # when this worker received it
    extended: float = field(default_factory=time.monotonic)  # when its visibility was last set
    answered_as: int | None = None  # the ledger number of its event, once answered
    answered_at: float = 0.0
    superseded: bool = False  # its visibility ran out and it was received again: this receipt is stale

    @classmethod
    def from_sqs(cls, message: dict[str, Any]) -> HeldMessage:
        attributes = message.get("Attributes", {})
        sent_ms = attributes.get("SentTimestamp")
        return cls(
            message_id=str(message["MessageId"]),
            receipt_handle=str(message["ReceiptHandle"]),
            body=str(message.get("Body", "")),
            receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
            sent_at=datetime.fromtimestamp(int(sent_ms) / 1000, UTC) if sent_ms else None,
        )


class Holdings:
    """Every message received from one queue and not deleted or handed back yet."""

    def __init__(self, aws: AwsClients, queue_url: str, visibility_timeout_s: int,
                 settled_total: Callable[[], int]) -> None:
        self.aws = aws
        self.queue_url = queue_url
        self.visibility_timeout_s = visibility_timeout_s
        # Extend well before the timeout runs out, so one slow or failed call does not lose a message.
        self.extend_every_s = visibility_timeout_s / 3
        self.settled_total = settled_total
        self._held: dict[str, HeldMessage] = {}  # by message id
        self._backoff = Backoff()
        self._retry_at = 0.0
        self.deleted_total = 0
        self.redelivered_while_held_total = 0

    def __len__(self) -> int:
        return len(self._held)

    def add(self, message: HeldMessage) -> bool:
        """Hold a received message; False when it is one already held, delivered again.

        SQS delivers at least once: a message can come back while this worker still works on it (a
        second copy from a standard queue, or a visibility that ran out during an outage). The copy is
        not worked on twice: the held message takes its receipt, the newest, the only one SQS accepts
        for the delete, and is answered once.
        """
        already = self._held.get(message.message_id)
        if already is None:
            self._held[message.message_id] = message
            return True
        already.receipt_handle = message.receipt_handle
        already.receive_count = max(already.receive_count, message.receive_count)
        already.extended = time.monotonic()
        already.superseded = False
        self.redelivered_while_held_total += 1
        return False

    def answered(self, message: HeldMessage, event_number: int) -> None:
        message.answered_as = event_number
        message.answered_at = time.monotonic()

    async def hand_back(self, message: HeldMessage, delay_s: int = 0) -> None:
        """Make an unanswered message visible again after `delay_s` (for another worker, or a retry)."""
        self._held.pop(message.message_id, None)
        try:
            await self._sqs("change_message_visibility", ReceiptHandle=message.receipt_handle,
                            VisibilityTimeout=delay_s)
        except Exception as exc:  # noqa: BLE001 - it becomes visible anyway when its timeout runs out
            log.warning("could not hand message %s back (%s); it returns after its visibility timeout",
                        message.message_id, exc)

    async def run(self) -> None:
        """Delete what is answered and settled, extend what is still worked on; until cancelled."""
        while True:
            await asyncio.sleep(TICK_S)
            if time.monotonic() < self._retry_at:
                continue
            try:
                await self.delete_settled()
                await self._extend_due()
            except Exception as exc:  # this loop must outlive any failure; it backs off
                delay = self._backoff.next_delay()
                if self._backoff.failures == 1 and is_unavailable(exc):
                    log.warning("SQS unavailable for deletes and visibility extensions (%s); retrying", exc)
                elif self._backoff.failures == 1:
                    log.error("deleting or extending messages failed; retrying", exc_info=exc)
                self._retry_at = time.monotonic() + delay
            else:
                if self._backoff.failures:
                    log.info("SQS reachable again")
                self._backoff.reset()

    async def delete_settled(self, *, all_settled: bool = False) -> None:
        """Delete the answered messages whose events are settled, in calls of ten, the longest
        answered first; the rest once one of them has waited DELETE_LINGER_S for company (with
        `all_settled`, at shutdown, at once): a delete is a request SQS bills, and event-loop CPU,
        whatever it carries."""
        settled, now_s = self.settled_total(), time.monotonic()
        done = [m for m in self._held.values() if m.answered_as is not None
                and (m.answered_as <= settled or now_s - m.answered_at >= SETTLE_WAIT_MAX_S)]
        if not all_settled:
            done.sort(key=_answered_at)
            rest = len(done) % MAX_RECEIVE_MESSAGES
            if rest and now_s - done[-rest].answered_at < DELETE_LINGER_S:
                del done[-rest:]
            if not done:
                return
        for chunk in _chunks(done):
            answer = await self._sqs("delete_message_batch", Entries=[
                {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(chunk)])
            failed = {f["Id"]: f for f in answer.get("Failed", [])}
            for i, message in enumerate(chunk):
                failure = failed.get(str(i))
                if failure is not None and not failure.get("SenderFault", True):
                    continue  # SQS's own failure: try again next time
                if failure is not None:
                    # Its receipt is stale (it was delivered again elsewhere): that delivery answers it too.
                    log.warning("could not delete answered message %s: %s", message.message_id, failure.get("Message"))
                else:
                    self.deleted_total += 1
                self._held.pop(message.message_id, None)

    async def _extend_due(self) -> None:
        now = time.monotonic()
        due = [m for m in self._held.values() if not m.superseded and now - m.extended >= self.extend_every_s]
        for chunk in _chunks(due):
            timeout = self.visibility_timeout_s
            answer = await self._sqs("change_message_visibility_batch", Entries=[
                {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": timeout}
                for i, m in enumerate(chunk)])
            failed = {f["Id"]: f for f in answer.get("Failed", [])}
            for i, message in enumerate(chunk):
                failure = failed.get(str(i))
                if failure is None:
                    message.extended = now
                elif failure.get("SenderFault", True):
                    # Its timeout ran out before this extension (an outage): it was or will be delivered
                    # again, and that delivery answers it too (same result key, same event id).
                    message.superseded = True
                    log.warning("message %s: its visibility timeout ran out before it could be extended (%s); "
                                "it may be answered twice", message.message_id, failure.get("Message"))

    async def hand_back_unanswered(self) -> int:
        """At shutdown: every message not answered becomes visible again at once; returns how many."""
        unanswered = [m for m in self._held.values() if m.answered_as is None]
        for chunk in _chunks(unanswered):
            try:
                await self._sqs("change_message_visibility_batch", Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0}
                    for i, m in enumerate(chunk)])
            except Exception as exc:  # noqa: BLE001 - they return after their visibility timeout anyway
                log.warning("could not hand %d messages back (%s); they return after their visibility timeout",
                            len(chunk), exc)
            for message in chunk:
                self._held.pop(message.message_id, None)
        return len(unanswered)

    async def _sqs(self, operation: str, **params: Any) -> Any:
        """One SQS call on this queue, bounded: a hung connection must not hold up a shutdown."""
        return await asyncio.wait_for(getattr(self.aws.sqs, operation)(QueueUrl=self.queue_url, **params),
                                      CALL_TIMEOUT_S)


def _answered_at(message: HeldMessage) -> float:
    return message.answered_at


def _chunks(messages: Sequence[HeldMessage]) -> list[Sequence[HeldMessage]]:
    return [messages[i:i + MAX_RECEIVE_MESSAGES] for i in range(0, len(messages), MAX_RECEIVE_MESSAGES)]
