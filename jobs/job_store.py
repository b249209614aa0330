"""Jobs in the output bucket: manifests, the owner index, and the results workers stored.

Layout (see job_manifest.py): `<job_id>/job.json` the manifest, `<job_id>/<image_id>.json` the
results, `_index/<owner hash>/<entry>` the owner index. Nothing else records a job: any web
instance answers for any job, and a job outlives the instance that took it.

S3 errors propagate as botocore raised them; the routes answer them as `queue_unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import msgspec
from botocore.exceptions import ClientError

from batchserve.jobs.aws import AwsClients, is_missing, is_unavailable
from batchserve.jobs.backoff import GaveUp
from batchserve.jobs.config import ResourceNames
from batchserve.jobs.job_cache import JobCache
from batchserve.jobs.job_manifest import (
    STATUS_METADATA,
    JobManifest,
    JobSummary,
    decode_manifest,
    decode_summary,
    encode,
    image_id_of,
    index_key,
    manifest_key,
    owner_prefix,
    results_prefix,
)
from batchserve.jobs.job_results import StoredResult
from batchserve.jobs.messages import result_key

log = logging.getLogger("batchserve.jobs")

# Result objects read at once when a poll finds new ones.
FETCH_CONCURRENCY = 32
JSON = "application/json"


def storage_failure(exc: BaseException) -> bool:
    """Whether S3 or SQS failed (refused, unreachable, or gave up on), rather than our own code."""
    return isinstance(exc, ClientError | GaveUp) or is_unavailable(exc)


def _not_modified(exc: ClientError) -> bool:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304


class JobStore:
    def __init__(self, aws: AwsClients, names: ResourceNames, cache: JobCache | None = None) -> None:
        self.aws = aws
        self.bucket = names.output_bucket
        self.cache = cache or JobCache()

    # ---- writing -----------------------------------------------------------------------
    async def save(self, manifest: JobManifest) -> None:
        """Write the manifest (its state also as metadata, in the same PUT), then its index entry."""
        await self.aws.s3.put_object(Bucket=self.bucket, Key=manifest_key(manifest.job_id), Body=encode(manifest),
                                     ContentType=JSON, Metadata={STATUS_METADATA: manifest.status})
        await self.aws.s3.put_object(Bucket=self.bucket,
                                     Key=index_key(manifest.owner, manifest.created_at, manifest.job_id),
                                     Body=encode(manifest.summary()), ContentType=JSON)
        self.cache.forget(manifest.job_id)  # the next read sees what was written

    # ---- reading -----------------------------------------------------------------------
    async def load(self, job_id: str) -> JobManifest | None:
        """The job's manifest, or None when there is no such job."""
        entry = self.cache.job(job_id)
        known = entry.manifest_etag if entry.manifest is not None else None
        try:
            answer = await self.aws.s3.get_object(Bucket=self.bucket, Key=manifest_key(job_id),
                                                  **({"IfNoneMatch": known} if known else {}))
        except ClientError as exc:
            if known and _not_modified(exc):
                return entry.manifest
            if is_missing(exc):
                self.cache.forget(job_id)
                return None
            raise
        body = await _read(answer)
        try:
            manifest = decode_manifest(body)
        except msgspec.DecodeError as exc:
            log.error("the manifest of job %s is unreadable (%s); answering as if the job did not exist", job_id, exc)
            self.cache.forget(job_id)
            return None
        entry.manifest, entry.manifest_etag = manifest, str(answer.get("ETag", ""))
        self.cache.trim()
        return manifest

    async def results(self, manifest: JobManifest) -> Mapping[str, StoredResult]:
        """The stored result of each input that has one, by image id; fetches only new or changed objects."""
        entry = self.cache.job(manifest.job_id)
        async with entry.lock:
            wanted = {item.image_id for item in manifest.inputs}
            listed: dict[str, str] = {}
            pages = self.aws.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=results_prefix(manifest.job_id))
            async for listing in pages:
                for item in listing.get("Contents", []):
                    image_id = image_id_of(str(item["Key"]), manifest.job_id)
                    if image_id in wanted:
                        listed[str(image_id)] = str(item.get("ETag", ""))
            known = entry.results
            stale = [image_id for image_id, etag in listed.items()
                     if image_id not in known or known[image_id].etag != etag]
            limit = asyncio.Semaphore(FETCH_CONCURRENCY)
            fetched = await asyncio.gather(*(self._result(manifest.job_id, image_id, limit) for image_id in stale))
            results = {image_id: known[image_id] for image_id in listed if image_id in known}
            results.update((image_id, stored) for image_id, stored in zip(stale, fetched, strict=True)
                           if stored is not None)
            entry.results = results
        self.cache.trim()
        return results

    async def _result(self, job_id: str, image_id: str, limit: asyncio.Semaphore) -> StoredResult | None:
        async with limit:
            try:
                answer = await self.aws.s3.get_object(Bucket=self.bucket, Key=result_key(job_id, image_id))
            except ClientError as exc:
                if is_missing(exc):  # deleted between the listing and now
                    return None
                raise
            return StoredResult.parse(str(answer.get("ETag", "")), await _read(answer))

    async def list_jobs(self, owner: str, limit: int, after: str | None = None) -> tuple[list[JobSummary], str | None]:
        """`owner`'s jobs, newest first, `limit` at most, after the cursor `after`; and the next cursor."""
        prefix = owner_prefix(owner)
        listing = await self.aws.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=limit,
                                                    **({"StartAfter": prefix + after} if after else {}))
        keys = [str(item["Key"]) for item in listing.get("Contents", [])]
        found = await asyncio.gather(*(self._summary(key) for key in keys))
        summaries = [summary for summary in found if summary is not None]
        more = bool(listing.get("IsTruncated")) and keys
        return summaries, (keys[-1][len(prefix):] if more else None)

    async def _summary(self, key: str) -> JobSummary | None:
        try:
            answer = await self.aws.s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise
        try:
            return decode_summary(await _read(answer))
        except msgspec.DecodeError:
            log.warning("index entry %s is unreadable; not listed", key)
            return None


async def _read(answer: dict[str, Any]) -> bytes:
    async with answer["Body"] as stream:
        data: bytes = await stream.read()
        return data
