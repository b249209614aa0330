"""Scale-in protection of a worker's EC2 instance while it holds messages.

An Auto Scaling group that scales in picks instances to terminate; one that holds messages would
have to hand them back (or lose its shutdown grace to a slow batch). So a worker started with
`--scale-in-protection` marks its own instance ProtectedFromScaleIn as soon as it holds a message
and lifts the mark once it has held none for `--scale-in-idle-s` (30 s): short gaps between
messages keep it on, so a busy worker makes one call per busy spell instead of two per message.
At exit the mark is lifted whatever happened, and at start it is set to what the worker needs,
which clears a mark a crashed predecessor left behind.

Protection is a saving, not a guarantee: every call is best effort, retried with backoff, logged
when it fails and never fatal; a worker SIGTERMed without it drains as always.

The instance and its group come from flags (or their environment twins), else from the instance
metadata service (IMDSv2): the instance id, and the group from the `aws:autoscaling:groupName`
tag, readable there when the launch template enables instance metadata tags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig

from batchserve.jobs.aws_errors import CONNECT_TIMEOUT_S, READ_TIMEOUT_S
from batchserve.jobs.backoff import CALL_TIMEOUT_S, Backoff
from batchserve.jobs.config import WorkerConfig

log = logging.getLogger("batchserve.worker")

IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_TIMEOUT_S = 2.0
IMDS_TOKEN_TTL_S = 21600
GROUP_TAG = "aws:autoscaling:groupName"
# How often the held count is looked at: protection follows the first held message within this.
CHECK_EVERY_S = 0.25
# SetInstanceProtection is a control-plane call with a modest rate limit: back off patiently.
RETRY_INITIAL_S, RETRY_MAX_S = 1.0, 60.0
# The last call, at exit, must fit in what is left of the container's stop timeout after the drain.
RELEASE_TIMEOUT_S = 5.0


class ProtectionUnavailable(Exception):
    """The instance or its Auto Scaling group cannot be found, so there is nothing to protect."""


class Located(Protocol):
    """Where the AWS endpoint and region come from (a queue-mode location: jobs/config.py)."""

    def endpoint_url(self, environ: Mapping[str, str] = ...) -> str | None: ...

    def region(self, environ: Mapping[str, str] = ...) -> str: ...


@dataclass(frozen=True)
class InstanceIdentity:
    instance_id: str
    group: str


class IdlePolicy:
    """Whether protection is wanted: while messages are held, and until `idle_s` has passed
    without any. Pure: the caller gives the time."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._last_held: float | None = None

    def wanted(self, held: int, now: float) -> bool:
        if held > 0:
            self._last_held = now
            return True
        return self._last_held is not None and now - self._last_held < self.idle_s


class ScaleInProtector:
    """Keeps one instance's ProtectedFromScaleIn in line with what the IdlePolicy wants."""

    def __init__(self, autoscaling: Any, identity: InstanceIdentity, held: Callable[[], int], *,
                 idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.autoscaling = autoscaling
        self.identity = identity
        self.held = held
        self.clock = clock
        self.policy = IdlePolicy(idle_s)
        # What the group was last told; None until a call succeeds (a predecessor may have left a mark).
        self.protected: bool | None = None
        self.calls = 0  # successful calls, for tests and logs
        self._backoff = Backoff(RETRY_INITIAL_S, RETRY_MAX_S)
        self._retry_at = 0.0

    async def run(self) -> None:
        """Follow the held count until cancelled."""
        while True:
            await self.step()
            await asyncio.sleep(CHECK_EVERY_S)

    async def step(self) -> None:
        now = self.clock()
        wanted = self.policy.wanted(self.held(), now)
        if wanted != self.protected and now >= self._retry_at:
            await self._tell(wanted, now)

    async def release(self) -> None:
        """At exit: lift the protection unless the group is known to have none (one bounded try)."""
        if self.protected is not False:
            self._retry_at = 0.0
            await self._tell(False, self.clock(), RELEASE_TIMEOUT_S)

    async def _tell(self, protected: bool, now: float, timeout_s: float = CALL_TIMEOUT_S) -> None:
        try:
            await asyncio.wait_for(self.autoscaling.set_instance_protection(
                InstanceIds=[self.identity.instance_id], AutoScalingGroupName=self.identity.group,
                ProtectedFromScaleIn=protected), timeout_s)
        except Exception as exc:  # noqa: BLE001 - protection is a saving: the worker carries on without it
            # A call that timed out may still have been applied: the state is unknown until one succeeds.
            self.protected = None
            delay = self._backoff.next_delay()
            self._retry_at = now + delay
            if self._backoff.failures == 1:
                log.warning("could not %s scale-in protection of instance %s in group %s (%s); retrying with "
                            "backoff", "set" if protected else "lift", self.identity.instance_id,
                            self.identity.group, exc)
            return
        if self._backoff.failures:
            log.info("scale-in protection calls succeed again after %d failure(s)", self._backoff.failures)
            self._backoff.reset()
        previous, self.protected = self.protected, protected
        self.calls += 1
        log.info("instance %s %s from scale-in", self.identity.instance_id,
                 "protected" if protected else "no longer protected" if previous else "not protected")


async def resolve_identity(instance_id: str | None, group: str | None, *,
                           environ: Mapping[str, str] = os.environ,
                           timeout_s: float = IMDS_TIMEOUT_S) -> InstanceIdentity:
    """The instance and group given, the rest asked of the instance metadata service (IMDSv2).
    Raises ProtectionUnavailable saying what is missing and how to give it."""
    if instance_id and group:
        return InstanceIdentity(instance_id, group)
    if environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        raise ProtectionUnavailable("the instance metadata service is disabled (AWS_EC2_METADATA_DISABLED): "
                                    "pass --instance-id and --autoscaling-group")
    endpoint = (environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_ENDPOINT).rstrip("/")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            async with http.put(f"{endpoint}/latest/api/token",
                                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL_S)}) as answer:
                answer.raise_for_status()
                token = {"X-aws-ec2-metadata-token": await answer.text()}
            instance_id = instance_id or await _metadata(http, f"{endpoint}/latest/meta-data/instance-id", token)
            group = group or await _metadata(http, f"{endpoint}/latest/meta-data/tags/instance/{GROUP_TAG}", token)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise ProtectionUnavailable(f"the instance metadata service at {endpoint} did not answer ({exc!r}); not on "
                                    "EC2? pass --instance-id and --autoscaling-group") from None
    if not instance_id:
        raise ProtectionUnavailable("the instance metadata service knows no instance id; pass --instance-id")
    if not group:
        raise ProtectionUnavailable(
            f"the instance has no {GROUP_TAG} tag in its metadata: it is not in an Auto Scaling group, or instance "
            "metadata tags are off (InstanceMetadataTags: enabled in the launch template); pass --autoscaling-group")
    return InstanceIdentity(instance_id, group)


async def _metadata(http: aiohttp.ClientSession, url: str, token: Mapping[str, str]) -> str | None:
    """One metadata value; None when the service has no such entry (404)."""
    async with http.get(url, headers=token) as answer:
        if answer.status == 404:
            return None
        answer.raise_for_status()
        return (await answer.text()).strip() or None


@contextlib.asynccontextmanager
async def autoscaling_client(location: Located, environ: Mapping[str, str] = os.environ) -> AsyncIterator[Any]:
    """An Auto Scaling client for the same endpoint and region as the queues' (jobs/aws.py connect)."""
    config = AioConfig(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                       retries={"mode": "standard", "max_attempts": 3})
    async with aioboto3.Session().client("autoscaling", config=config, endpoint_url=location.endpoint_url(environ),
                                         region_name=location.region(environ)) as client:
        yield client


class ScaleInProtection:
    """The worker's handle: `async with ScaleInProtection(location, config) as protection:` then
    `protection.watch(held)` once messages can be held. Does nothing unless --scale-in-protection
    is on and the instance and its group are known; lifts the protection on the way out."""

    def __init__(self, location: Located, config: WorkerConfig, environ: Mapping[str, str] = os.environ) -> None:
        self.location = location
        self.config = config
        self.environ = environ
        self.protector: ScaleInProtector | None = None
        self._task: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> ScaleInProtection:
        if not self.config.scale_in_protection:
            return self
        try:
            identity = await resolve_identity(self.config.instance_id, self.config.autoscaling_group,
                                              environ=self.environ)
        except ProtectionUnavailable as exc:
            log.warning("scale-in protection is off: %s", exc)
            return self
        client = await self._stack.enter_async_context(autoscaling_client(self.location, self.environ))
        # Nothing is held until `watch` says how to count; the exit lifts the protection either way.
        self.protector = ScaleInProtector(client, identity, lambda: 0, idle_s=self.config.scale_in_idle_s)
        log.info("scale-in protection: instance %s of group %s, lifted after %.0f s without a held message",
                 identity.instance_id, identity.group, self.config.scale_in_idle_s)
        return self

    def watch(self, held: Callable[[], int]) -> None:
        """Start following `held()`, the number of messages the worker holds."""
        if self.protector is None or self._task is not None:
            return
        self.protector.held = held
        self._task = asyncio.create_task(self.protector.run(), name="scale-in-protection")

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        try:
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            if self.protector is not None:
                await self.protector.release()
        finally:
            await self._stack.aclose()
