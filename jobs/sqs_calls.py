"""SQS with its per-message calls on the short path (jobs/short_path.py).

Sending, receiving, deleting and re-timing messages happen for every image, on both tiers; they
go out here as SQS's JSON protocol (a POST of the call's parameters, `X-Amz-Target:
AmazonSQS.<Call>`), signed, to the client's own endpoint and region, and their answers come back
as the dictionaries aiobotocore returns. Every other call (queues, attributes, tags, paginators)
is the aiobotocore client's own: `Sqs` hands any attribute it does not define to it.

As botocore does, a received message whose body does not match its MD5 fails the receive, and so
does a sent one SQS reports with another body's MD5.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ChecksumError, ClientError

from batchserve.jobs.aws_errors import READ_TIMEOUT_S
from batchserve.jobs.short_path import SignedClient, with_retries

_CONTENT_TYPE = "application/x-amz-json-1.0"


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
        for sent in answer.get("Successful", []):
            _check_md5(sent.get("MD5OfMessageBody"), bodies.get(sent.get("Id"), ""))
        return answer

    async def receive_message(self, **params: Any) -> dict[str, Any]:
        if not self.short:
            return dict(await self.client.receive_message(**params))
        answer = await self._call("ReceiveMessage", params, wait_s=float(params.get("WaitTimeSeconds") or 0))
        for message in answer.get("Messages", []):
            _check_md5(message.get("MD5OfBody"), message.get("Body", ""))
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
        body = json.dumps(params, default=_blob).encode()
        # As botocore asks: errors with the codes of SQS's former query protocol, which jobs/aws_errors.py knows.
        headers = {"Content-Type": _CONTENT_TYPE, "X-Amz-Target": f"AmazonSQS.{operation}", "x-amzn-query-mode": "true"}

        async def attempt() -> dict[str, Any]:
            answer = await self._http.request("POST", self._base, self._path, headers, body, wait_s + READ_TIMEOUT_S)
            parsed: dict[str, Any] = json.loads(answer.body) if answer.body else {}
            if answer.status >= 300:
                raise _client_error(operation, answer.status, answer.headers, parsed)
            parsed["ResponseMetadata"] = {"HTTPStatusCode": answer.status}
            return parsed

        return await with_retries(attempt)


def _blob(value: object) -> str:
    """Binary values (message attributes) as the JSON protocol carries them: base64."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not a parameter SQS takes")


def _check_md5(reported: str | None, body: str) -> None:
    if reported is None:
        return
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
