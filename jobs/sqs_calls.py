"""SQS with its per-message calls on the short path (jobs/short_path.py).

Sending, receiving, deleting and re-timing messages happen for every image, on both tiers; they
go out here as SQS's JSON protocol (a POST of the call's parameters, `X-Amz-Target:
AmazonSQS.<Call>`), signed, to the client's own endpoint and region, and their answers come back
as the dictionaries aiobotocore returns. Every other call (queues, attributes, tags, paginators)
is the aiobotocore client's own: `Sqs` hands any attribute it does not define to it.

As botocore does, a received message whose body does not match its MD5 fails the receive, and so
does a sent one SQS reports with another body's MD5 (long bodies are hashed in a thread).

Parameters and answers are encoded and parsed with msgspec: a receive's answer carries up to ten
requests of up to 60 KB each (an image inside each), which `json` parses several times slower, on
the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from urllib.parse import urlsplit

import msgspec
from botocore.exceptions import ChecksumError, ClientError

from batchserve.jobs.aws_errors import READ_TIMEOUT_S
from batchserve.jobs.short_path import SignedClient, with_retries

_CONTENT_TYPE = "application/x-amz-json-1.0"
# Binary values (message attributes) go out as the JSON protocol carries them: base64, which is how
# msgspec encodes bytes.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
# Bodies longer than this in all are checked against their MD5s in a thread: MD5 runs at about
# 0.7 GB/s and hashlib lets go of the GIL while it hashes, so ten requests carrying their images
# (600 KB) would otherwise hold the event loop for most of a millisecond.
INLINE_MD5_CHARS = 64 * 1024


class Sqs:
    """An aiobotocore SQS client whose message calls take the short path (when `short`)."""

    def __init__(self, client: Any, credentials: Any, *, connections: int) -> None:
        self.client = client
        endpoint = urlsplit(str(client.meta.endpoint_url))
        self._base = f"{endpoint.scheme}://{endpoint.netloc}"
        self._path = endpoint.path or "/"
        self._http = SignedClient("sqs", str(client.meta.region_name), credentials, connections=connections)
        self.short = SignedClient.usable(credentials, self._base)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)  # every call not defined here: aiobotocore's

    async def close(self) -> None:
        await self._http.close()

    async def send_message_batch(self, **params: Any) -> dict[str, Any]:
        if not self.short:
            return dict(await self.client.send_message_batch(**params))
        answer = await self._call("SendMessageBatch", params)
        bodies = {entry["Id"]: entry["MessageBody"] for entry in params.get("Entries", [])}
        await _check_md5s([(sent.get("MD5OfMessageBody"), bodies.get(sent.get("Id"), ""))
                           for sent in answer.get("Successful", [])])
        return answer

    async def receive_message(self, **params: Any) -> dict[str, Any]:
        if not self.short:
            return dict(await self.client.receive_message(**params))
        answer = await self._call("ReceiveMessage", params, wait_s=float(params.get("WaitTimeSeconds") or 0))
        await _check_md5s([(message.get("MD5OfBody"), message.get("Body", ""))
                           for message in answer.get("Messages", [])])
        return answer

    async def delete_message_batch(self, **params: Any) -> dict[str, Any]:
        if not self.short:
            return dict(await self.client.delete_message_batch(**params))
        return await self._call("DeleteMessageBatch", params)

    async def delete_message(self, **params: Any) -> dict[str, Any]:
        if not self.short:
            return dict(await self.client.delete_message(**params))
        return await self._call("DeleteMessage", params)

    async def change_message_visibility(self, **params: Any) -> dict[str, Any]:
        if not self.short:
            return dict(await self.client.change_message_visibility(**params))
        return await self._call("ChangeMessageVisibility", params)

    async def change_message_visibility_batch(self, **params: Any) -> dict[str, Any]:
        if not self.short:
            return dict(await self.client.change_message_visibility_batch(**params))
        return await self._call("ChangeMessageVisibilityBatch", params)

    async def _call(self, operation: str, params: dict[str, Any], wait_s: float = 0.0) -> dict[str, Any]:
        body = _encode(params)
        # As botocore asks: errors with the codes of SQS's former query protocol, which jobs/aws_errors.py knows.
        headers = {"Content-Type": _CONTENT_TYPE, "X-Amz-Target": f"AmazonSQS.{operation}", "x-amzn-query-mode": "true"}

        async def attempt() -> dict[str, Any]:
            answer = await self._http.request("POST", self._base, self._path, headers, body, wait_s + READ_TIMEOUT_S)
            parsed: dict[str, Any] = _decode(answer.body) if answer.body else {}
            if answer.status >= 300:
                raise _client_error(operation, answer.status, answer.headers, parsed)
            parsed["ResponseMetadata"] = {"HTTPStatusCode": answer.status}
            return parsed

        return await with_retries(attempt)


async def _check_md5s(reported_bodies: list[tuple[str | None, str]]) -> None:
    """Each (MD5 SQS reported, body) pair matches, else ChecksumError; on the loop when they are
    short, else in a thread."""
    if sum(len(body) for _, body in reported_bodies) <= INLINE_MD5_CHARS:
        _check_all(reported_bodies)
    else:
        await asyncio.get_running_loop().run_in_executor(None, _check_all, reported_bodies)


def _check_all(reported_bodies: list[tuple[str | None, str]]) -> None:
    for reported, body in reported_bodies:
        if reported is None:
            continue
        actual = hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()
        if actual != reported:
            raise ChecksumError(checksum_type="MD5", expected_checksum=reported, actual_checksum=actual)


def _client_error(operation: str, status: int, headers: dict[str, str], parsed: dict[str, Any]) -> ClientError:
    """SQS's error answer as botocore raises it: the query-compatible code when SQS gives one
    ('AWS.SimpleQueueService.NonExistentQueue'), else the error type ('QueueDoesNotExist')."""
    query_code = headers.get("x-amzn-query-error", "").split(";", 1)[0]
    code = query_code or str(parsed.get("__type", "")).rsplit("#", 1)[-1] or str(status)
    message = str(parsed.get("message") or parsed.get("Message") or "")
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers}}, operation)
