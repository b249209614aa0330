"""Reading and writing one S3 object on the short path (jobs/short_path.py).

A worker reads one image and writes one result object per message, and the web tier writes one
upload per image; everything else (listing, deleting, heads, buckets) stays on aiobotocore.

Where a call goes is where aiobotocore's client sends it: the client's endpoint (`--aws-endpoint-url`,
`AWS_ENDPOINT_URL`, or AWS's for the region) and region, path-style on a custom endpoint as the
clients are configured, and on AWS a bucket whose name is a DNS label under its own host name, as
botocore addresses it. A redirect (a bucket in another region) sends that call through aiobotocore,
which follows it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

from botocore.exceptions import ClientError
from botocore.utils import percent_encode

from batchserve.client.pooled_http import HttpAnswer
from batchserve.jobs.aws_errors import READ_TIMEOUT_S
from batchserve.jobs.short_path import SignedClient, with_retries

# The largest answer taken: a read asks for a range no longer than its own bound.
MAX_BODY_BYTES = 1 << 31
_REDIRECTS = {301, 302, 307, 308}
_RANGE_NOT_SATISFIABLE = 416  # the answer to a range of an empty object
_DNS_LABEL = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_CONTENT_RANGE = re.compile(r"^bytes \d+-\d+/(\d+)$")


@dataclass(frozen=True)
class StoredObject:
    data: bytes  # at most the bound the read asked for, plus one byte
    content_type: str
    size: int  # of the whole object


class ObjectStore:
    """GET and PUT of single objects. `client` is the aiobotocore S3 client whose endpoint, region
    and credentials this follows, and which takes the calls the short path cannot."""

    def __init__(self, client: Any, credentials: Any, *, connections: int) -> None:
        self.client = client
        endpoint = str(client.meta.endpoint_url)
        self._endpoint = urlsplit(endpoint)
        s3_config = getattr(client.meta.config, "s3", None) or {}
        self._path_style = s3_config.get("addressing_style") == "path"
        self._http = SignedClient("s3", str(client.meta.region_name), credentials, connections=connections,
                                  max_body_bytes=MAX_BODY_BYTES)
        self.short = SignedClient.usable(credentials, endpoint)

    async def close(self) -> None:
        await self._http.close()

    async def get(self, bucket: str, key: str, max_bytes: int) -> StoredObject:
        """The object, or its first `max_bytes` + 1 bytes (`size` says how large it is)."""
        wanted = f"bytes=0-{max_bytes}"
        answer = await self._call("GetObject", "GET", bucket, key, {"Range": wanted}) if self.short else None
        if answer is None:
            return await self._get_through_client(bucket, key, wanted)
        if answer.status == _RANGE_NOT_SATISFIABLE:
            return StoredObject(b"", answer.headers.get("content-type", ""), 0)
        return StoredObject(answer.body, answer.headers.get("content-type", ""),
                            _size(answer.headers.get("content-range", ""), len(answer.body)))

    async def put(self, bucket: str, key: str, body: bytes, content_type: str | None = None) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        if not self.short or await self._call("PutObject", "PUT", bucket, key, headers, body) is None:
            await self.client.put_object(Bucket=bucket, Key=key, Body=body, **({"ContentType": content_type}
                                                                              if content_type else {}))

    async def _call(self, operation: str, method: str, bucket: str, key: str, headers: dict[str, str],
                    body: bytes = b"") -> HttpAnswer | None:
        """The answer of a call that succeeded (or asked for a range of an empty object); None when
        it was redirected, for aiobotocore to make."""
        base, path = self.address(bucket, key)

        async def attempt() -> HttpAnswer | None:
            answer = await self._http.request(method, base, path, headers, body, READ_TIMEOUT_S)
            if answer.status < 300 or (answer.status == _RANGE_NOT_SATISFIABLE and method == "GET"):
                return answer
            if answer.status in _REDIRECTS:
                return None
            raise _client_error(operation, answer)

        return await with_retries(attempt)

    def address(self, bucket: str, key: str) -> tuple[str, str]:
        """(scheme://authority, path) of an object, addressed as botocore addresses it here."""
        endpoint = self._endpoint
        object_path = "/" + percent_encode(key, safe="/~")
        if self._path_style or not _DNS_LABEL.match(bucket):
            return f"{endpoint.scheme}://{endpoint.netloc}", f"/{bucket}{object_path}"
        return f"{endpoint.scheme}://{bucket}.{endpoint.netloc}", object_path

    async def _get_through_client(self, bucket: str, key: str, wanted: str) -> StoredObject:
        try:
            answer = await self.client.get_object(Bucket=bucket, Key=key, Range=wanted)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == _RANGE_NOT_SATISFIABLE:
                return StoredObject(b"", "", 0)
            raise
        async with answer["Body"] as stream:
            data = await stream.read()
        return StoredObject(data, str(answer.get("ContentType") or ""), _size(str(answer.get("ContentRange") or ""),
                                                                              len(data)))


def _size(content_range: str, received: int) -> int:
    """The whole object's size, from a ranged answer's Content-Range ('bytes 0-99/1234')."""
    found = _CONTENT_RANGE.match(content_range)
    return int(found.group(1)) if found else received


def _client_error(operation: str, answer: HttpAnswer) -> ClientError:
    """S3's error answer as botocore raises it: its code and message (the status for a body-less one)."""
    code, message = str(answer.status), ""
    if answer.body:
        try:
            root = ElementTree.fromstring(answer.body)
        except ElementTree.ParseError:
            pass
        else:
            code = root.findtext("Code") or code
            message = root.findtext("Message") or ""
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": answer.status, "HTTPHeaders": answer.headers}},
                       operation)
