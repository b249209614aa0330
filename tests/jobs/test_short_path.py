"""The short path of the per-image S3 and SQS calls (jobs/short_path.py): each goes where botocore
would send it, and answers and fails as aiobotocore's would, against moto's server."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import ChecksumError, ClientError

from batchserve.jobs.aws import AwsClients, error_code, is_missing, is_unavailable
from batchserve.jobs.s3_objects import ObjectStore
from batchserve.jobs.sqs_calls import INLINE_MD5_CHARS, _check_md5s
from tests.jobs.queue_helpers import Deployment, unique_name

KEYS = ("uploads/5f0c", "job-1/a b+c~d.json", "photos/ünïcode.jpg")


@pytest.mark.parametrize(("endpoint", "bucket"), [
    (None, "photos-a"),  # AWS: the bucket under its own host name
    (None, "photos.with.dots"),  # AWS: a name that is no DNS label stays in the path
    ("http://127.0.0.1:9000", "photos-a"),  # a custom endpoint: path-style, as the clients are configured
])
async def test_objects_are_addressed_as_botocore_addresses_them(endpoint: str | None, bucket: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    session = AioSession()
    config = AioConfig(s3={"addressing_style": "path" if endpoint else "auto"})
    async with session.create_client("s3", region_name="eu-west-1", endpoint_url=endpoint, config=config) as s3:
        store = ObjectStore(s3, await session.get_credentials(), connections=1)
        s3.meta.events.register("request-created.s3.GetObject", _stop_at_the_url)
        for key in KEYS:
            with pytest.raises(Addressed) as addressed:  # botocore's own URL for the call, caught before it goes
                await s3.get_object(Bucket=bucket, Key=key)
            url = urlsplit(addressed.value.url)
            assert store.address(bucket, key) == (f"{url.scheme}://{url.netloc}", url.path)
        await store.close()


class Addressed(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _stop_at_the_url(request: Any, **_: Any) -> None:
    raise Addressed(request.url)


async def test_per_image_calls_answer_and_fail_as_aiobotocore_does(aws: AwsClients, deployment: Deployment) -> None:
    assert aws.objects.short and aws.sqs.short  # credentials and no proxy: these calls take the short path
    bucket = deployment.names.input_bucket
    photo = b"\xff\xd8 not much of a photo"
    await aws.objects.put(bucket, "short/a b.jpg", photo, "image/jpeg")
    stored = await aws.objects.get(bucket, "short/a b.jpg", 1024)
    assert (stored.data, stored.content_type, stored.size) == (photo, "image/jpeg", len(photo))
    head = await aws.s3.head_object(Bucket=bucket, Key="short/a b.jpg")  # aiobotocore finds what it wrote
    assert head["ContentLength"] == len(photo) and head["ContentType"] == "image/jpeg"
    cut = await aws.objects.get(bucket, "short/a b.jpg", 9)  # a read takes its bound + 1 byte, and the size
    assert (cut.data, cut.size) == (photo[:10], len(photo))
    with pytest.raises(ClientError) as no_object:
        await aws.objects.get(bucket, "short/none.jpg", 1024)
    assert error_code(no_object.value) == "NoSuchKey" and is_missing(no_object.value)

    sent = await aws.sqs.send_message_batch(QueueUrl=deployment.requests_url, Entries=[
        {"Id": "0", "MessageBody": '{"ünï": "code"}'}, {"Id": "1", "MessageBody": "two"}])
    assert sorted(s["Id"] for s in sent["Successful"]) == ["0", "1"] and not sent.get("Failed")
    got = await aws.sqs.receive_message(QueueUrl=deployment.requests_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                        MessageSystemAttributeNames=["ApproximateReceiveCount"])
    assert sorted(m["Body"] for m in got["Messages"]) == sorted(['{"ünï": "code"}', "two"])
    assert all(m["Attributes"]["ApproximateReceiveCount"] == "1" for m in got["Messages"])
    deleted = await aws.sqs.delete_message_batch(QueueUrl=deployment.requests_url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got["Messages"])])
    assert len(deleted["Successful"]) == 2
    assert await deployment.depth() == (0, 0)

    gone = (await aws.sqs.create_queue(QueueName=unique_name("gone")))["QueueUrl"]
    await aws.sqs.delete_queue(QueueUrl=gone)
    with pytest.raises(ClientError) as no_queue:
        await aws.sqs.send_message_batch(QueueUrl=gone, Entries=[{"Id": "0", "MessageBody": "x"}])
    assert is_missing(no_queue.value) and not is_unavailable(no_queue.value)


async def test_long_bodies_are_checked_off_the_loop_and_arrive_whole(aws: AwsClients, deployment: Deployment) -> None:
    bodies = [f'{{"n": {n}, "data": "{chr(97 + n) * 40_000}"}}' for n in range(3)]  # 120 KB: over INLINE_MD5_CHARS
    assert sum(map(len, bodies)) > INLINE_MD5_CHARS
    sent = await aws.sqs.send_message_batch(QueueUrl=deployment.requests_url, Entries=[
        {"Id": str(n), "MessageBody": body} for n, body in enumerate(bodies)])
    assert len(sent["Successful"]) == 3
    got: list[str] = []
    while len(got) < 3:
        answer = await aws.sqs.receive_message(QueueUrl=deployment.requests_url, MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1)
        got += [m["Body"] for m in answer.get("Messages", [])]
    assert sorted(got) == sorted(bodies)


@pytest.mark.parametrize("length", [100, 2 * INLINE_MD5_CHARS], ids=["on-the-loop", "in-a-thread"])
async def test_a_body_that_does_not_match_its_md5_fails_as_botocore_fails(length: int) -> None:
    body = "x" * length
    good = hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()
    await _check_md5s([(good, body), (None, body)])  # SQS gave no MD5: nothing to check
    with pytest.raises(ChecksumError):
        await _check_md5s([(good, body), (good, body[:-1] + "y")])


async def test_binary_attributes_go_out_as_base64(aws: AwsClients, deployment: Deployment) -> None:
    blob = bytes(range(256))
    await aws.sqs.send_message_batch(QueueUrl=deployment.requests_url, Entries=[{
        "Id": "0", "MessageBody": "with an attribute",
        "MessageAttributes": {"blob": {"DataType": "Binary", "BinaryValue": blob}}}])
    # Read back through aiobotocore, which decodes what SQS stored.
    answer = await aws.sqs.client.receive_message(QueueUrl=deployment.requests_url, WaitTimeSeconds=1,
                                                  MessageAttributeNames=["All"])
    (message,) = answer["Messages"]
    assert message["MessageAttributes"]["blob"]["BinaryValue"] == blob
