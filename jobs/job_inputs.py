"""What a job is asked to classify: uploaded files, s3:// objects named one by one, or an s3:// prefix.

A JSON body is `{"images": ["s3://bucket/key", ...]}` or `{"prefix": "s3://bucket/some/prefix/"}`.
s3:// inputs may only name buckets the operator allowed (`--allowed-buckets`): the workers read
them with their own role, so without that rule any caller could have them read any bucket they
can reach. The deployment's own buckets are not implicitly allowed: the input bucket holds every
caller's uploads (a prefix job over it would classify other people's images), and the output
bucket holds every job's manifest and results, so it is refused even when listed.

A job holds at most MAX_IMAGES_PER_JOB images, checked before anything is stored or sent.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import msgspec
from botocore.exceptions import ClientError

from batchserve.jobs.aws import AwsClients, error_code, is_missing
from batchserve.serving.errors import Forbidden, InvalidParameter, InvalidRequest, PayloadTooLarge

MAX_IMAGES_PER_JOB = 10_000
SCHEME = "s3://"
MAX_KEY_BYTES = 1024
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_LIST_PAGE = 1000
_ACCESS_DENIED = {"AccessDenied", "AllAccessDisabled", "403"}


class JobBody(msgspec.Struct, forbid_unknown_fields=True):
    images: list[str] | None = None
    prefix: str | None = None


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


_body_decoder = msgspec.json.Decoder(JobBody)


def parse_body(raw: bytes) -> JobBody:
    """The JSON body of a job request: exactly one of `images` (a non-empty list) and `prefix`."""
    try:
        body = _body_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidParameter(f"the job body is not as documented ({exc}): send {{\"images\": "
                               "[\"s3://bucket/key\", ...]} or {\"prefix\": \"s3://bucket/prefix/\"}") from None
    except msgspec.DecodeError:
        raise InvalidRequest("the request body is not JSON: send a JSON object, or multipart 'image' files") from None
    if (body.images is None) == (body.prefix is None):
        raise InvalidParameter("the job body needs exactly one of 'images' (a list of s3:// URLs) and 'prefix'")
    if body.images is not None:
        if not body.images:
            raise InvalidParameter("'images' is empty: name at least one s3:// object")
        check_count(len(body.images), "were named")
    return body


def check_count(count: int, how: str) -> None:
    if count > MAX_IMAGES_PER_JOB:
        raise PayloadTooLarge(f"a job takes at most {MAX_IMAGES_PER_JOB} images; {count} {how}: "
                              "split them over several jobs")


def parse_s3_url(text: str, *, prefix: bool = False) -> S3Location:
    """`s3://bucket/key` (for a prefix the key may be empty: the whole bucket)."""
    what = "prefix" if prefix else "image"
    if not text.startswith(SCHEME):
        raise InvalidParameter(f"{what} {text[:80]!r} is not an s3:// URL")
    bucket, slash, key = text[len(SCHEME):].partition("/")
    if not _BUCKET.match(bucket):
        raise InvalidParameter(f"{what} {text[:80]!r} does not name a valid S3 bucket")
    if not prefix and not (slash and key):
        raise InvalidParameter(f"image {text[:80]!r} names no object: write s3://{bucket}/KEY")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidParameter(f"{what} {text[:80]!r}...: an S3 key is at most {MAX_KEY_BYTES} bytes")
    return S3Location(bucket, key)


@dataclass(frozen=True)
class BucketRule:
    """Which buckets a job may read: those allowed, never the deployment's output bucket."""

    allowed: Collection[str]
    output_bucket: str

    def check(self, location: S3Location) -> None:
        if location.bucket == self.output_bucket:
            raise Forbidden(f"bucket {location.bucket} holds this deployment's results; a job cannot read it")
        if location.bucket not in self.allowed:
            raise Forbidden(f"bucket {location.bucket} is not one this server may read for jobs: its operator "
                            f"lists the buckets jobs may name with --allowed-buckets")


async def list_prefix(aws: AwsClients, prefix: S3Location) -> list[S3Location]:
    """Every object under `prefix` but folder markers (keys ending in '/'), in key order, paged.
    PayloadTooLarge past MAX_IMAGES_PER_JOB, InvalidParameter when there is none."""
    found: list[S3Location] = []
    pages = aws.s3.get_paginator("list_objects_v2").paginate(
        Bucket=prefix.bucket, Prefix=prefix.key, PaginationConfig={"PageSize": _LIST_PAGE})
    try:
        async for listing in pages:
            found += [S3Location(prefix.bucket, str(item["Key"])) for item in listing.get("Contents", [])
                      if not str(item["Key"]).endswith("/")]
            if len(found) > MAX_IMAGES_PER_JOB:
                check_count(len(found), f"or more objects are under {prefix}")
    except ClientError as exc:
        if is_missing(exc):
            raise InvalidParameter(f"bucket {prefix.bucket} does not exist") from None
        if error_code(exc) in _ACCESS_DENIED:
            raise Forbidden(f"this server is not allowed to list {prefix} ({error_code(exc)})") from None
        raise
    if not found:
        raise InvalidParameter(f"there is no object under {prefix}: nothing to classify")
    return found
