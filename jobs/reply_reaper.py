"""Reply queues outlive the web instances that were killed (SIGKILL, a lost host): the live ones
reap them.

Every web instance tags its own reply queue with a heartbeat (the time, in seconds) once a
minute. At start and every few minutes after, each instance deletes the deployment's reply queues
whose heartbeat (or, for a queue never tagged, whose creation) is older than `STALE_S`: no live
instance goes that long without a beat, so only the queues of dead ones go. `queue down` removes
whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from batchserve.jobs.aws import AwsClients, is_missing
from batchserve.jobs.config import ResourceNames
from batchserve.jobs.resources import queue_url, reply_queues

log = logging.getLogger("batchserve.web_tier")

HEARTBEAT_TAG = "batchserve-heartbeat"
HEARTBEAT_S = 60.0
REAP_EVERY_S = 300.0
STALE_S = 15 * 60.0


async def beat(aws: AwsClients, url: str, now: float | None = None) -> None:
    await aws.sqs.tag_queue(QueueUrl=url, Tags={HEARTBEAT_TAG: str(int(time.time() if now is None else now))})


async def last_sign_of_life(aws: AwsClients, url: str) -> float | None:
    """The queue's last heartbeat, else its creation time; None when it is gone."""
    try:
        tags = (await aws.sqs.list_queue_tags(QueueUrl=url)).get("Tags", {})
        if HEARTBEAT_TAG in tags:
            return float(tags[HEARTBEAT_TAG])
        attributes = await aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])
        return float(attributes["Attributes"]["CreatedTimestamp"])
    except Exception as exc:
        if is_missing(exc):
            return None
        raise


async def reap_stale(aws: AwsClients, names: ResourceNames, keep: str, stale_s: float = STALE_S) -> list[str]:
    """Deletes the deployment's reply queues, but `keep`, silent for over `stale_s`; their names."""
    reaped = []
    for name in await reply_queues(aws, names):
        if name == keep:
            continue
        url = await queue_url(aws, name)
        seen = None if url is None else await last_sign_of_life(aws, url)
        if url is None or seen is None or time.time() - seen <= stale_s:
            continue
        with contextlib.suppress(Exception):  # another instance reaped it first
            await aws.sqs.delete_queue(QueueUrl=url)
            reaped.append(name)
    if reaped:
        log.info("reaped %d reply queue(s) of web instances gone for over %.0f min: %s", len(reaped),
                 stale_s / 60, ", ".join(reaped))
    return reaped


async def keep_alive_and_reap(aws: AwsClients, names: ResourceNames, own_name: str,
                              own_url: Callable[[], str]) -> None:
    """Runs for the web instance's life: its heartbeat every minute, a reap every few minutes.
    `own_url` is read each time: the instance makes its queue again if someone deleted it."""
    next_reap = 0.0
    while True:
        try:
            await beat(aws, own_url())
            if time.monotonic() >= next_reap:
                await reap_stale(aws, names, keep=own_name)
                next_reap = time.monotonic() + REAP_EVERY_S
        except Exception as exc:  # noqa: BLE001 - housekeeping waits out an outage like the polls do
            log.debug("reply queue housekeeping failed: %s", exc)
        await asyncio.sleep(HEARTBEAT_S)
