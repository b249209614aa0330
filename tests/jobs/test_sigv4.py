"""The short path's SigV4 signer against botocore's: the same header lines, byte for byte, for the
requests the short path sends (S3 object reads and writes, SQS JSON calls)."""

from __future__ import annotations

from datetime import UTC, datetime

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from batchserve.jobs.sigv4 import SigV4Signer, signable

NOW = datetime(2026, 12, 2, 6, 37, 23, tzinfo=UTC)
SQS_HEADERS = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "AmazonSQS.SendMessageBatch",
               "x-amzn-query-mode": "true"}


def botocore_lines(service: str, region: str, method: str, url: str, headers: dict[str, str], body: bytes,
                   credentials: ReadOnlyCredentials, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    (S3SigV4Auth if service == "s3" else SigV4Auth)(credentials, service, region).add_auth(request)
    return "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())


@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEJr//////////wEaDtoken+/="])
@pytest.mark.parametrize(("service", "method", "url", "headers", "body"), [
    ("s3", "PUT", "http://127.0.0.1:5000/shop-output/sync/5f0c.json", {"Content-Type": "application/json"},
     b'{"image_id": "5f0c"}'),
    ("s3", "GET", "https://shop-input.s3.eu-west-1.amazonaws.com/uploads/caf%C3%A9%20%2B%20co.jpg",
     {"Range": "bytes=0-16777216"}, b""),
    ("s3", "PUT", "https://s3.amazonaws.com:443/b/a//double/./dot.json", {"Content-Type": "  text/plain   x "}, b"x"),
    ("sqs", "POST", "http://localhost:4566/", SQS_HEADERS, b'{"QueueUrl": "q", "Entries": []}' * 50),
    ("sqs", "POST", "https://sqs.us-west-2.amazonaws.com", {**SQS_HEADERS, "User-Agent": "not signed"}, b"{}"),
    ("sqs", "POST", "http://[::1]:9324/queue/a/../b", SQS_HEADERS, b"{}"),
])
def test_the_same_signature_as_botocore(service: str, method: str, url: str, headers: dict[str, str], body: bytes,
                                        token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    region = "eu-west-1"
    ours = SigV4Signer(service, region).header_lines(method, url, headers, body, credentials.access_key,
                                                     credentials.secret_key, token, now=NOW)
    assert ours == botocore_lines(service, region, method, url, headers, body, credentials, monkeypatch)


def test_the_signing_key_follows_the_day_and_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = SigV4Signer("sqs", "us-east-1")
    for secret, now in (("one", NOW), ("one", NOW.replace(day=3)), ("two", NOW.replace(day=3))):
        credentials = ReadOnlyCredentials("AKID", secret, None)
        ours = signer.header_lines("POST", "http://127.0.0.1:1/", SQS_HEADERS, b"{}", "AKID", secret, None, now=now)
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda now=now: now.replace(tzinfo=None))
        request = AWSRequest(method="POST", url="http://127.0.0.1:1/", headers=dict(SQS_HEADERS), data=b"{}")
        SigV4Auth(credentials, "sqs", "us-east-1").add_auth(request)
        assert ours == "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())


def test_urls_with_a_query_are_left_to_botocore() -> None:
    assert signable("http://h/b/k") and not signable("http://h/b/k?uploads") and not signable("http://h/b#f")
