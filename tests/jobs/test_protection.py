"""Scale-in protection of a worker's instance (jobs/protection.py) against moto's Auto Scaling:
set while messages are held, kept through short gaps, lifted after the idle period and at exit;
failures logged, never fatal; the instance and its group found through IMDSv2."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aioboto3
import boto3
import pytest
from aiobotocore.config import AioConfig
from aiohttp import web

from batchserve.jobs.config import QueueConfig, WorkerConfig
from batchserve.jobs.protection import (
    GROUP_TAG,
    IdlePolicy,
    InstanceIdentity,
    ProtectionUnavailable,
    ScaleInProtection,
    ScaleInProtector,
    autoscaling_client,
    resolve_identity,
)
from batchserve.loadtest.server_process import free_port
from tests.jobs.queue_helpers import AWS_ENV, Deployment, WorkerProcess, unique_name, wait_until

REGION = AWS_ENV["AWS_DEFAULT_REGION"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the idle rule


def test_protection_is_wanted_while_held_and_until_the_idle_period_has_passed() -> None:
    policy = IdlePolicy(idle_s=30)
    assert policy.wanted(0, 0.0) is False  # nothing held yet: no protection at start
    assert policy.wanted(3, 1.0) is True
    assert policy.wanted(0, 2.0) is True  # a gap between messages keeps it
    assert policy.wanted(1, 20.0) is True  # ...and a new message restarts the idle period
    assert policy.wanted(0, 49.9) is True
    assert policy.wanted(0, 50.0) is False  # 30 s after the last held message
    assert policy.wanted(1, 50.1) is True  # held again: protected again at once


# ---------------------------------------------------------------- against moto


@pytest.fixture
def group_instance(moto_endpoint: str) -> Iterator[InstanceIdentity]:
    """A fresh Auto Scaling group in moto with one running instance."""
    clients = {name: boto3.client(name, region_name=REGION, endpoint_url=moto_endpoint)
               for name in ("ec2", "autoscaling")}
    ami = clients["ec2"].register_image(Name=unique_name("ami"))["ImageId"]
    template = unique_name("lt")
    clients["ec2"].create_launch_template(LaunchTemplateName=template,
                                          LaunchTemplateData={"ImageId": ami, "InstanceType": "g4dn.xlarge"})
    group = unique_name("workers")
    clients["autoscaling"].create_auto_scaling_group(
        AutoScalingGroupName=group, LaunchTemplate={"LaunchTemplateName": template}, MinSize=0, MaxSize=2,
        DesiredCapacity=1, AvailabilityZones=[f"{REGION}a"])
    instances = clients["autoscaling"].describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
        "AutoScalingGroups"][0]["Instances"]
    assert len(instances) == 1
    yield InstanceIdentity(instances[0]["InstanceId"], group)
    clients["autoscaling"].delete_auto_scaling_group(AutoScalingGroupName=group, ForceDelete=True)


def protected(moto_endpoint: str, identity: InstanceIdentity) -> bool:
    client = boto3.client("autoscaling", region_name=REGION, endpoint_url=moto_endpoint)
    found = client.describe_auto_scaling_instances(InstanceIds=[identity.instance_id])["AutoScalingInstances"]
    return bool(found[0]["ProtectedFromScaleIn"])


@pytest.fixture
async def autoscaling(moto_endpoint: str) -> AsyncIterator[object]:
    async with autoscaling_client(QueueConfig(aws_endpoint_url=moto_endpoint)) as client:
        yield client


async def test_held_messages_protect_the_instance_until_it_has_been_idle(
        moto_endpoint: str, group_instance: InstanceIdentity, autoscaling: object) -> None:
    held, clock = [0], FakeClock()
    protector = ScaleInProtector(autoscaling, group_instance, lambda: held[0], idle_s=30, clock=clock)
    # A mark left by a crashed predecessor is cleared at start, when nothing is held.
    boto3.client("autoscaling", region_name=REGION, endpoint_url=moto_endpoint).set_instance_protection(
        InstanceIds=[group_instance.instance_id], AutoScalingGroupName=group_instance.group, ProtectedFromScaleIn=True)
    await protector.step()
    assert protected(moto_endpoint, group_instance) is False

    held[0] = 2
    await protector.step()
    assert protected(moto_endpoint, group_instance) is True
    calls = protector.calls
    for count in (0, 1, 0, 3, 0):  # messages come and go with short gaps: no call, no flapping
        held[0] = count
        clock.now += 5
        await protector.step()
    assert protector.calls == calls and protected(moto_endpoint, group_instance) is True

    last_held = clock.now - 5  # the 3 messages
    clock.now = last_held + 29
    await protector.step()
    assert protected(moto_endpoint, group_instance) is True  # idle, but not for 30 s yet
    clock.now += 2
    await protector.step()
    assert protected(moto_endpoint, group_instance) is False
    assert protector.calls == calls + 1

    held[0] = 1
    await protector.step()
    assert protected(moto_endpoint, group_instance) is True
    await protector.release()  # at exit, even while holding
    assert protected(moto_endpoint, group_instance) is False


async def test_a_failing_call_is_logged_once_retried_later_and_never_raised(
        group_instance: InstanceIdentity, caplog: pytest.LogCaptureFixture) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every call fails at once
    held, clock = [1], FakeClock()
    once = AioConfig(retries={"mode": "standard", "max_attempts": 1})  # botocore's own retries only slow this down
    async with aioboto3.Session().client("autoscaling", region_name=REGION, endpoint_url=closed,
                                         config=once) as unreachable:
        protector = ScaleInProtector(unreachable, group_instance, lambda: held[0], idle_s=30, clock=clock)
        with caplog.at_level(logging.WARNING, logger="batchserve.worker"):
            await protector.step()
            await protector.step()  # within the backoff: not tried again
            clock.now += 120
            await protector.step()  # tried again, still failing: no second line for the same outage
            await protector.release()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not set scale-in protection" in warnings[0], warnings
    assert group_instance.instance_id in warnings[0]
    assert protector.protected is None and protector.calls == 0


async def test_protection_off_or_without_an_instance_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    location = QueueConfig(aws_endpoint_url="http://127.0.0.1:9")
    async with ScaleInProtection(location, WorkerConfig()) as off:
        off.watch(lambda: 1)
        assert off.protector is None
    with caplog.at_level(logging.WARNING, logger="batchserve.worker"):
        async with ScaleInProtection(location, WorkerConfig(scale_in_protection=True),
                                     environ={"AWS_EC2_METADATA_DISABLED": "true"}) as unknown:
            unknown.watch(lambda: 1)
            assert unknown.protector is None
    assert any("scale-in protection is off" in r.getMessage() and "--instance-id" in r.getMessage()
               for r in caplog.records)


async def test_a_worker_protects_its_instance_while_it_holds_messages_and_lifts_it_at_exit(
        deployment: Deployment, moto_endpoint: str, group_instance: InstanceIdentity, tmp_path: Path,
        chelsea: bytes) -> None:
    await deployment.put_image("a.jpg", chelsea)
    messages = [deployment.request("a.jpg") for _ in range(4)]
    # Batches that take half a second each keep messages held long enough to see; the idle period
    # outlasts the test, so only the exit can lift the protection.
    worker = WorkerProcess(deployment.name, "--simulate-model", "500+0", "--max-batch-size", "2",
                           "--scale-in-protection", "--scale-in-idle-s", "600",
                           "--instance-id", group_instance.instance_id,
                           "--autoscaling-group", group_instance.group, cwd=tmp_path).start()
    try:
        assert protected(moto_endpoint, group_instance) is False
        await deployment.send_all(messages)

        async def is_protected() -> bool:
            return protected(moto_endpoint, group_instance)

        await wait_until(is_protected, 30, "the instance to be protected while messages are held")
        await deployment.collect({m["image_id"] for m in messages}, 60)
        assert protected(moto_endpoint, group_instance) is True  # idle for less than 600 s
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log()
    finally:
        worker.stop()
    assert protected(moto_endpoint, group_instance) is False
    log = worker.log()
    assert f"instance {group_instance.instance_id} not protected from scale-in" in log  # at start
    assert f"instance {group_instance.instance_id} protected from scale-in" in log
    # Lifted on the way out, once the drain was done.
    assert log.rindex(f"instance {group_instance.instance_id} no longer protected") > log.index("drained:")


# ---------------------------------------------------------------- instance metadata (IMDSv2)


class FakeMetadataService:
    """The few IMDSv2 paths the worker reads: a session token first, then values that need it."""

    TOKEN = "token-123"

    def __init__(self, tags: dict[str, str]) -> None:
        self.tags = tags
        self.requests: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/latest/api/token", self.token)
        app.router.add_get("/latest/meta-data/instance-id", self.instance_id)
        app.router.add_get("/latest/meta-data/tags/instance/{key}", self.tag)
        return app

    async def token(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        if "X-aws-ec2-metadata-token-ttl-seconds" not in request.headers:
            return web.Response(status=400)
        return web.Response(text=self.TOKEN)

    def _authorised(self, request: web.Request) -> bool:
        self.requests.append(request.path)
        return request.headers.get("X-aws-ec2-metadata-token") == self.TOKEN

    async def instance_id(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        return web.Response(text="i-0123456789abcdef0")

    async def tag(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.Response(status=401)
        value = self.tags.get(request.match_info["key"])
        return web.Response(status=404) if value is None else web.Response(text=value)


@pytest.fixture
async def metadata_service() -> AsyncIterator[tuple[FakeMetadataService, dict[str, str]]]:
    service = FakeMetadataService({GROUP_TAG: "shop-workers", "Name": "shop-worker"})
    runner = web.AppRunner(service.app())
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield service, {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}/"}
    finally:
        await runner.cleanup()


async def test_the_instance_and_its_group_come_from_imdsv2(
        metadata_service: tuple[FakeMetadataService, dict[str, str]]) -> None:
    service, environ = metadata_service
    assert await resolve_identity(None, None, environ=environ) == InstanceIdentity("i-0123456789abcdef0",
                                                                                   "shop-workers")
    assert service.requests[0] == "/latest/api/token"
    # What the flags give is not asked for.
    service.requests.clear()
    assert await resolve_identity("i-given", None, environ=environ) == InstanceIdentity("i-given", "shop-workers")
    assert f"/latest/meta-data/tags/instance/{GROUP_TAG}" in service.requests
    assert "/latest/meta-data/instance-id" not in service.requests
    service.requests.clear()
    assert await resolve_identity("i-given", "g", environ=environ) == InstanceIdentity("i-given", "g")
    assert service.requests == []


async def test_a_missing_group_tag_or_no_metadata_service_says_what_to_pass(
        metadata_service: tuple[FakeMetadataService, dict[str, str]]) -> None:
    service, environ = metadata_service
    service.tags.pop(GROUP_TAG)  # instance metadata tags off, or not in a group
    with pytest.raises(ProtectionUnavailable, match="InstanceMetadataTags: enabled.*--autoscaling-group"):
        await resolve_identity(None, None, environ=environ)
    nowhere = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    with pytest.raises(ProtectionUnavailable, match="not on EC2.*--instance-id and --autoscaling-group"):
        await resolve_identity(None, None, environ=nowhere, timeout_s=1)
