"""The bucket side of event store backups: objects streamed up compressed, and read back verified.

The client is the model repository's (model_repo/object_store.py): s3:// through AWS's usual
credential and endpoint chains, gs:// through Cloud Storage's S3-compatible XML API with an HMAC
key or Google's application default credentials. Its calls block, so each one runs in a worker
thread; the event loop only moves bytes between the database and those calls.

Uploads stream: table data is gzip-compressed as it arrives and sent in parts of a multipart
upload once a part's worth is ready, with at most one part in flight while the next one fills.
Memory stays around two parts whatever the table's size; an object smaller than one part goes
up in a single PUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError

from batchserve.events.backup_format import BackupError
from batchserve.model_repo.errors import ObjectStoreError
from batchserve.model_repo.location import ObjectStoreLocation
from batchserve.model_repo.object_store import ObjectStore

__all__ = ["DEFAULT_PART_BYTES", "BackupBucket", "ObjectWriter", "StoredObject"]

DEFAULT_PART_BYTES = 16 << 20  # S3 wants at least 5 MiB per part but the last
MAX_PARTS = 10_000  # S3's limit per multipart upload
# Raw bytes gathered before one compression step: big enough that the hop to a thread is cheap.
_COMPRESS_STEP = 1 << 20
_READ_CHUNK = 1 << 20
_MISSING_BUCKET = {"NoSuchBucket"}
_MISSING_KEY = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class StoredObject:
    size: int
    sha256: str
    raw_bytes: int


class BackupBucket:
    """Objects under one ``s3://`` or ``gs://`` location. Every method blocks (run it in a thread)."""

    def __init__(self, location: ObjectStoreLocation, endpoint_url: str | None = None) -> None:
        self.location = location
        try:
            self._store = ObjectStore(location, endpoint_url)
        except ObjectStoreError as exc:
            raise BackupError(str(exc)) from None
        self._client: Any = self._store.client

    def key(self, relative: str) -> str:
        return self.location.key(relative)

    def url(self, relative: str = "") -> str:
        return f"{self.location.scheme}://{self.location.bucket}/{self.key(relative)}".rstrip("/")

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_BUCKET:
                raise BackupError(f"bucket {self.location.bucket!r} does not exist ({self.location})") from None
            raise BackupError(self._store.describe_failure(action, exc)) from None
        except BotoCoreError as exc:
            raise BackupError(self._store.describe_failure(action, exc)) from None

    def check_bucket(self) -> None:
        """BackupError unless the bucket exists and these credentials may list it."""
        with self._translated("list"):
            self._client.list_objects_v2(Bucket=self.location.bucket, Prefix=self.location.key_prefix, MaxKeys=1)

    def list_keys(self, under: str = "") -> list[str]:
        """Keys below the location (relative to it) that start with ``under``."""
        prefix = self.location.key_prefix
        found: list[str] = []
        with self._translated("list"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix + under
            )
            for page in pages:
                found.extend(str(item["Key"])[len(prefix) :] for item in page.get("Contents", []))
        return found

    def put(self, relative: str, data: bytes) -> None:
        with self._translated(f"write {relative} to"):
            self._client.put_object(Bucket=self.location.bucket, Key=self.key(relative), Body=data)

    def get(self, relative: str, out: IO[bytes]) -> tuple[int, str]:
        """Copy one object into ``out``; its size and sha256 as read. BackupError when it is missing."""
        digest = hashlib.sha256()
        size = 0
        with self._translated(f"read {relative} from"):
            try:
                answer = self._client.get_object(Bucket=self.location.bucket, Key=self.key(relative))
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) in _MISSING_KEY:
                    raise BackupError(f"{self.url(relative)} does not exist: the backup is incomplete") from None
                raise
            body = answer["Body"]
            try:
                for chunk in iter(lambda: body.read(_READ_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            finally:
                body.close()
        return size, digest.hexdigest()

    def create_multipart(self, relative: str) -> str:
        with self._translated(f"start an upload of {relative} to"):
            return str(
                self._client.create_multipart_upload(Bucket=self.location.bucket, Key=self.key(relative))["UploadId"]
            )

    def upload_part(self, relative: str, upload_id: str, number: int, data: bytes) -> str:
        with self._translated(f"upload part {number} of {relative} to"):
            answer = self._client.upload_part(
                Bucket=self.location.bucket, Key=self.key(relative), UploadId=upload_id, PartNumber=number, Body=data
            )
        return str(answer["ETag"])

    def complete_multipart(self, relative: str, upload_id: str, etags: list[str]) -> None:
        parts = [{"PartNumber": i, "ETag": etag} for i, etag in enumerate(etags, start=1)]
        with self._translated(f"finish the upload of {relative} to"):
            self._client.complete_multipart_upload(
                Bucket=self.location.bucket,
                Key=self.key(relative),
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )

    def abort_multipart(self, relative: str, upload_id: str) -> None:
        # Best effort: the backup already failed; a lifecycle rule reaps what this leaves behind.
        with contextlib.suppress(ClientError, BotoCoreError):
            self._client.abort_multipart_upload(Bucket=self.location.bucket, Key=self.key(relative), UploadId=upload_id)


class ObjectWriter:
    """One object written as a gzip stream: ``write`` raw bytes, then ``close`` (or ``abort``)."""

    def __init__(
        self, bucket: BackupBucket, relative: str, *, part_bytes: int = DEFAULT_PART_BYTES, level: int = 6
    ) -> None:
        self.bucket = bucket
        self.relative = relative
        self.part_bytes = part_bytes
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: a gzip header and trailer
        self._digest = hashlib.sha256()
        self._raw = bytearray()
        self._part = bytearray()
        self._raw_bytes = 0
        self._size = 0
        self._upload_id: str | None = None
        self._etags: list[str] = []
        self._in_flight: asyncio.Task[str] | None = None

    async def write(self, data: bytes) -> None:
        self._raw += data
        if len(self._raw) >= min(_COMPRESS_STEP, self.part_bytes):
            await self._compress(final=False)
            if len(self._part) >= self.part_bytes:
                await self._send_part()

    async def close(self) -> StoredObject:
        await self._compress(final=True)
        if self._upload_id is None:
            data = bytes(self._part)
            await asyncio.to_thread(self.bucket.put, self.relative, data)
        else:
            if self._part:
                await self._send_part()
            await self._wait_in_flight()
            await asyncio.to_thread(self.bucket.complete_multipart, self.relative, self._upload_id, self._etags)
        return StoredObject(self._size, self._digest.hexdigest(), self._raw_bytes)

    async def abort(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None:
            # The part's thread cannot be interrupted; wait for it so the abort below sees every part.
            with contextlib.suppress(Exception):
                await task
        if self._upload_id is not None:
            await asyncio.to_thread(self.bucket.abort_multipart, self.relative, self._upload_id)

    async def _compress(self, *, final: bool) -> None:
        raw, self._raw = bytes(self._raw), bytearray()
        self._raw_bytes += len(raw)

        def step() -> bytes:
            out = self._compressor.compress(raw)
            if final:
                out += self._compressor.flush()
            self._digest.update(out)
            return out

        out = await asyncio.to_thread(step)
        self._size += len(out)
        self._part += out

    async def _send_part(self) -> None:
        data, self._part = bytes(self._part), bytearray()
        if self._upload_id is None:
            self._upload_id = await asyncio.to_thread(self.bucket.create_multipart, self.relative)
        await self._wait_in_flight()
        number = len(self._etags) + 1
        if number > MAX_PARTS:
            raise BackupError(f"{self.relative} needs more than {MAX_PARTS} parts of {self.part_bytes} bytes")
        self._in_flight = asyncio.create_task(
            asyncio.to_thread(self.bucket.upload_part, self.relative, self._upload_id, number, data)
        )

    async def _wait_in_flight(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None:
            self._etags.append(await task)
