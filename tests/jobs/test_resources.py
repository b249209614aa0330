"""`batchserve queue up|down|status|redrive` against moto's server, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from batchserve.jobs import resources
from batchserve.jobs.config import MAX_RETENTION_S
from tests.jobs.queue_helpers import Deployment, unique_name


def queue_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchserve", "queue", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def status(name: str) -> dict[str, dict[str, Any]]:
    done = queue_cli("status", "--name", name, "--json")
    assert done.returncode == 0, done.stderr
    return {q["name"]: q for q in json.loads(done.stdout)["queues"]}


async def test_up_creates_what_is_missing_once_and_prints_the_settings_to_export(aws: Any) -> None:
    name = unique_name()
    first = queue_cli("up", "--name", name, "--retention-s", "7200", "--sync-results-days", "2",
                      "--visibility-timeout-s", "45")
    assert first.returncode == 0, first.stderr
    exported = dict(line.split("=", 1) for line in first.stdout.splitlines())
    assert exported["BATCHSERVE_QUEUE_NAME"] == name
    assert exported["BATCHSERVE_INPUT_BUCKET"] == f"{name}-input"
    assert exported["BATCHSERVE_OUTPUT_BUCKET"] == f"{name}-output"
    assert exported["BATCHSERVE_AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    assert exported["BATCHSERVE_VISIBILITY_TIMEOUT_S"] == "45"  # workers started from these lines use it
    assert first.stderr.count("created") == 5

    again = queue_cli("up", "--name", name, "--retention-s", "7200", "--sync-results-days", "2")
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stderr and again.stderr.count("exists") == 5

    urls = {q: (await aws.sqs.get_queue_url(QueueName=f"{name}-{q}"))["QueueUrl"]
            for q in ("requests", "requests-dlq", "responses")}
    attributes = {q: (await aws.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
                  for q, url in urls.items()}
    redrive = json.loads(attributes["requests"]["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == attributes["requests-dlq"]["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == 3
    assert attributes["requests"]["MessageRetentionPeriod"] == attributes["responses"]["MessageRetentionPeriod"] \
        == "7200"
    assert attributes["requests-dlq"]["MessageRetentionPeriod"] == str(MAX_RETENTION_S)
    rules = (await aws.s3.get_bucket_lifecycle_configuration(Bucket=f"{name}-output"))["Rules"]
    assert [(r["Filter"]["Prefix"], r["Expiration"]["Days"], r["Status"]) for r in rules] == [("sync/", 2, "Enabled")]

    assert {q: (s["visible"], s["in_flight"]) for q, s in status(name).items()} == {
        f"{name}-requests": (0, 0), f"{name}-requests-dlq": (0, 0), f"{name}-responses": (0, 0)}
    gone = queue_cli("down", "--name", name)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.count("removed") == 5


async def test_bucket_names_can_be_chosen_since_s3_names_are_global(aws: Any) -> None:
    name = unique_name()
    bucket_in, bucket_out = unique_name("in-"), unique_name("out-")
    done = queue_cli("up", "--name", name, "--input-bucket", bucket_in, "--output-bucket", bucket_out)
    assert done.returncode == 0, done.stderr
    assert f"BATCHSERVE_INPUT_BUCKET={bucket_in}" in done.stdout.splitlines()
    buckets = {b["Name"] for b in (await aws.s3.list_buckets())["Buckets"]}
    assert {bucket_in, bucket_out} <= buckets and f"{name}-input" not in buckets
    assert queue_cli("down", "--name", name, "--input-bucket", bucket_in, "--output-bucket", bucket_out).returncode == 0
    assert not {bucket_in, bucket_out} & {b["Name"] for b in (await aws.s3.list_buckets())["Buckets"]}


async def test_status_counts_waiting_and_in_flight_messages(deployment: Deployment) -> None:
    await deployment.send_all([deployment.request("a.jpg"), deployment.request("b.jpg")])
    await deployment.aws.sqs.receive_message(QueueUrl=deployment.requests_url, MaxNumberOfMessages=1,
                                             VisibilityTimeout=60)
    assert (status(deployment.name)[deployment.names.requests]["visible"],
            status(deployment.name)[deployment.names.requests]["in_flight"]) == (1, 1)
    table = queue_cli("status", "--name", deployment.name)
    assert table.returncode == 0
    assert any(line.split() == [deployment.names.requests, "1", "1", "0"] for line in table.stdout.splitlines())


async def test_a_message_received_three_times_is_dead_lettered_and_redrive_brings_it_back(
        deployment: Deployment) -> None:
    await deployment.send(deployment.request("crash.jpg"))
    for delivery in (1, 2, 3):  # each receiver "crashes": the message becomes visible again at once
        got = await deployment.aws.sqs.receive_message(QueueUrl=deployment.requests_url, VisibilityTimeout=0,
                                                       MessageSystemAttributeNames=["ApproximateReceiveCount"])
        assert got["Messages"][0]["Attributes"]["ApproximateReceiveCount"] == str(delivery)
    fourth = await deployment.aws.sqs.receive_message(QueueUrl=deployment.requests_url, VisibilityTimeout=0)
    assert not fourth.get("Messages")
    assert await deployment.depth(deployment.names.dead_letters) == (1, 0)

    moved = queue_cli("redrive", "--name", deployment.name)
    assert moved.returncode == 0, moved.stderr
    assert "moved 1 message(s)" in moved.stdout
    assert await deployment.depth(deployment.names.dead_letters) == (0, 0)
    assert await deployment.depth() == (1, 0)


async def test_down_removes_reply_queues_left_by_web_instances(deployment: Deployment) -> None:
    await deployment.aws.sqs.create_queue(QueueName=f"{deployment.names.reply_prefix}0a1b2c")
    assert await resources.reply_queues(deployment.aws, deployment.names) == [f"{deployment.name}-reply-0a1b2c"]
    done = queue_cli("down", "--name", deployment.name, "--keep-buckets")
    assert done.returncode == 0, done.stderr
    assert f"removed {deployment.name}-reply-0a1b2c" in done.stdout.splitlines()
    assert await resources.reply_queues(deployment.aws, deployment.names) == []
    assert (await deployment.aws.s3.head_bucket(Bucket=deployment.names.input_bucket))  # kept


def test_commands_without_a_name_or_without_the_queues_say_what_to_do(moto_endpoint: str) -> None:
    nameless = queue_cli("status")
    assert nameless.returncode == 2 and "--queue-name" in nameless.stderr
    missing = queue_cli("status", "--name", unique_name())
    assert missing.returncode == 1 and "batchserve queue up" in missing.stderr
    redrive = queue_cli("redrive", "--name", unique_name())
    assert redrive.returncode == 1 and "does not exist" in redrive.stderr
