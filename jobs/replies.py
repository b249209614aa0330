"""Sending response messages: to the request's reply queue when it names one, else NAME-responses.

A worker answers many messages at once, so responses to one queue go out together, up to ten per
SendMessageBatch call. As the batcher does with images, a response is sent at once when no send to
its queue is under way, and otherwise joins the next batch: a lone answer waits for nothing, and
under load batches fill by themselves. A send starts on the next turn of the event loop and takes
in what came for its queue meanwhile, so the answers of one model batch, which come in one turn,
share sends instead of the first ones going out alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from batchserve.jobs.aws import AwsClients, is_missing
from batchserve.jobs.backoff import retrying
from batchserve.jobs.config import MAX_RECEIVE_MESSAGES, ResourceNames
from batchserve.jobs.errors import InvalidReplyQueue

log = logging.getLogger("batchserve.worker")

# Sends under way to one queue at once; more responses wait and go out together.
SENDS_PER_QUEUE = 2
# SQS caps a batch at 256 KiB of bodies; a response is about 1 KB (up to ~70 KB with every class), a
# request with its image inside up to about 230 KB.
MAX_BATCH_BYTES = 240 * 1024


def _encoded_size(body: str) -> int:
    """What SQS counts: UTF-8 bytes (file names and user agents may hold any characters)."""
    return len(body) if body.isascii() else len(body.encode())


class ReplyQueueGone(Exception):
    """The reply queue was deleted (its web instance stopped): nobody waits for this answer."""


@dataclass
class _Lane:
    """The responses waiting for one queue, and how many sends to it are under way."""

    waiting: deque[tuple[str, asyncio.Future[None]]] = field(default_factory=deque)
    sending: int = 0


class Responder:
    def __init__(self, aws: AwsClients, names: ResourceNames, responses_url: str,
                 keep_trying: Callable[[], bool]) -> None:
        self.aws = aws
        self.names = names
        self.responses_url = responses_url
        self.keep_trying = keep_trying
        self._urls: dict[str, str] = {}
        self._finding: dict[str, asyncio.Future[str | None]] = {}
        self._lanes: dict[str, _Lane] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    async def destination(self, reply_to: str | None) -> str | None:
        """The URL to answer on: NAME-responses, or the reply queue `reply_to` names (a queue URL or
        name of this deployment's NAME-reply-*); None when that reply queue no longer exists."""
        if reply_to is None:
            return self.responses_url
        name = reply_to.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith(self.names.reply_prefix) or name == self.names.reply_prefix:
            raise InvalidReplyQueue(f"reply_to must name a queue {self.names.reply_prefix}<id>, not {reply_to!r}")
        url = self._urls.get(name)
        if url is not None:
            return url
        # The first messages for a new web instance arrive together: one lookup serves them all.
        finding = self._finding.get(name)
        if finding is None:
            finding = self._finding[name] = asyncio.ensure_future(self._find(name))
            finding.add_done_callback(functools.partial(self._found, name))
        return await asyncio.shield(finding)

    async def _find(self, name: str) -> str | None:
        try:
            answer = await retrying(lambda: self.aws.sqs.get_queue_url(QueueName=name), f"finding queue {name}",
                                    log, self.keep_trying)
        except Exception as exc:
            if is_missing(exc):
                return None
            raise
        url = self._urls[name] = str(answer["QueueUrl"])
        return url

    def _found(self, name: str, finding: asyncio.Future[str | None]) -> None:
        self._finding.pop(name, None)
        if not finding.cancelled():
            finding.exception()  # read: its waiters may all have gone

    async def send(self, url: str, body: str) -> None:
        """Send `body` to the queue at `url` (batched with other responses to it). Raises
        ReplyQueueGone when the queue no longer exists, GaveUp when SQS stayed away until shutdown."""
        await self.enqueue(url, body)

    def enqueue(self, url: str, body: str) -> asyncio.Future[None]:
        """`send`, under way before this returns (its call starts ahead of whatever is started after
        it): the future says how it went."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane = self._lanes.setdefault(url, _Lane())
        lane.waiting.append((body, done))
        self._pump(url, lane)
        return done

    def _pump(self, url: str, lane: _Lane) -> None:
        while lane.waiting and lane.sending < SENDS_PER_QUEUE:
            batch = _fill([], lane.waiting)
            lane.sending += 1
            task = asyncio.get_running_loop().create_task(self._send_batch(url, batch, lane.waiting))
            self._flushes.add(task)
            task.add_done_callback(functools.partial(self._sent, url, lane))

    def _sent(self, url: str, lane: _Lane, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        lane.sending -= 1
        self._pump(url, lane)

    async def _send_batch(self, url: str, batch: list[tuple[str, asyncio.Future[None]]],
                          waiting: deque[tuple[str, asyncio.Future[None]]]) -> None:
        _fill(batch, waiting)  # what came since this send was started
        entries = [{"Id": str(i), "MessageBody": body} for i, (body, _) in enumerate(batch)]
        try:
            answer = await retrying(lambda: self.aws.sqs.send_message_batch(QueueUrl=url, Entries=entries),
                                    "sending responses", log, self.keep_trying)
        except Exception as exc:  # noqa: BLE001 - every waiting answer gets the failure
            failure: BaseException = ReplyQueueGone(url) if is_missing(exc) else exc
            for _, done in batch:
                if not done.done():
                    done.set_exception(failure)
            return
        failed = {f["Id"]: f for f in answer.get("Failed", [])}
        for i, (_, done) in enumerate(batch):
            if done.done():
                continue
            problem = failed.get(str(i))
            if problem is None:
                done.set_result(None)
            else:
                done.set_exception(RuntimeError(f"SQS refused a response: {problem.get('Message')}"))


def _fill(batch: list[tuple[str, asyncio.Future[None]]], waiting: deque[tuple[str, asyncio.Future[None]]]
          ) -> list[tuple[str, asyncio.Future[None]]]:
    """`batch` with what waits added, up to what one SendMessageBatch takes."""
    size = sum(_encoded_size(body) for body, _ in batch)
    while waiting and len(batch) < MAX_RECEIVE_MESSAGES:
        next_size = _encoded_size(waiting[0][0])
        if batch and size + next_size > MAX_BATCH_BYTES:
            break
        size += next_size
        batch.append(waiting.popleft())
    return batch
