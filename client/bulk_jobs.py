"""`batchserve classify --jobs`: hand the images to the queue backend as jobs, follow them, fetch results.

Submissions (POST /v1/jobs, answered 202 `{"job_id", "status", "images", "links"}`):
- local files go up as multipart `image` parts, at most `MAX_FILES_PER_JOB` files and about
  `MAX_BYTES_PER_JOB` per job (the server's default limits on one request: 64 files, 16 MiB), so
  many files make several jobs; each part's filename is the path as listed, which the results
  carry back as `image_file_name`;
- s3:// objects named one by one go in one job as `{"images": [...]}`;
- each s3:// prefix is its own job, `{"prefix": ...}`; the server lists it.

Then every job is polled (GET /v1/jobs/{id}, every `poll_s`) until its status is neither `queued`
nor `running` (`done`, `partial`, `failed`), the counts feeding the progress line; then its
`results` are read page by page (`?offset=&limit=`) and written like direct results. A result's
path is its `image_file_name` for uploads (mapped back to the path sent when the server kept only
the name's last part), `s3://image_bucket/image_key` for s3 inputs when the result names them.
Images a finished job has no result for count as failed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from batchserve.client.bulk import Outcome, RunSettings, open_session, preflight
from batchserve.client.inputs import S3Object, S3Prefix, content_type_of
from batchserve.client.output import Result, ResultWriter
from batchserve.client.progress import Progress
from batchserve.client.transport import RunStopped, error_of, send

__all__ = [
    "MAX_BYTES_PER_JOB", "MAX_FILES_PER_JOB", "PAGE_SIZE", "Submission", "iter_results", "plan_submissions",
    "result_of_item", "run_jobs", "sent_names",
]

MAX_FILES_PER_JOB = 64
MAX_BYTES_PER_JOB = 15 * 1024 * 1024
PAGE_SIZE = 100  # results per page read; small enough for any limit a server is likely to cap
RUNNING_STATUSES = frozenset({"queued", "running"})

UPLOAD, IMAGES, PREFIX = "upload", "images", "prefix"


@dataclass(frozen=True)
class Submission:
    kind: str  # UPLOAD (files), IMAGES (s3 URIs) or PREFIX (one s3 URI)
    items: tuple[str, ...]

    def describe(self) -> str:
        if self.kind == PREFIX:
            return self.items[0]
        return _plural(len(self.items), "file" if self.kind == UPLOAD else "s3 object")


@dataclass
class Ticket:
    """A submitted job as the server last described it."""

    job_id: str
    submission: Submission
    images: int
    status: str
    done: int = 0
    failed: int = 0

    @property
    def running(self) -> bool:
        return self.status in RUNNING_STATUSES


@dataclass
class _State:
    tickets: list[Ticket] = field(default_factory=list)
    outcome: Outcome = field(default_factory=Outcome)


def plan_submissions(files: list[str], s3_objects: list[S3Object], s3_prefixes: list[S3Prefix], *,
                     size_of: Callable[[str], int] = os.path.getsize, max_files: int = MAX_FILES_PER_JOB,
                     max_bytes: int = MAX_BYTES_PER_JOB) -> list[Submission]:
    """The jobs to submit, in order: file uploads in chunks, then named s3 objects, then each prefix.
    A file larger than `max_bytes` goes alone (the server decides whether it is too large)."""
    plan: list[Submission] = []
    chunk: list[str] = []
    chunk_bytes = 0
    for path in files:
        try:
            size = size_of(path)
        except OSError:
            size = 0  # reading it fails later, as that file's error
        if chunk and (len(chunk) >= max_files or chunk_bytes + size > max_bytes):
            plan.append(Submission(UPLOAD, tuple(chunk)))
            chunk, chunk_bytes = [], 0
        chunk.append(path)
        chunk_bytes += size
    if chunk:
        plan.append(Submission(UPLOAD, tuple(chunk)))
    if s3_objects:
        plan.append(Submission(IMAGES, tuple(obj.uri for obj in s3_objects)))
    plan.extend(Submission(PREFIX, (prefix.uri,)) for prefix in s3_prefixes)
    return plan


async def iter_results(fetch_page: Callable[[int, int], Awaitable[list[Any]]], total: int,
                       limit: int = PAGE_SIZE) -> AsyncIterator[Any]:
    """Every result of a job: pages of `limit` from offset 0 until a short or empty page, or until
    `total` results came (a server that ignored `limit` cannot keep the loop going)."""
    offset = 0
    while offset < total:
        page = await fetch_page(offset, limit)
        for item in page:
            yield item
        offset += len(page)
        if len(page) < limit:
            return


def sent_names(paths: tuple[str, ...]) -> dict[str, str]:
    """File name in a result → the path sent: the path itself, or its last part when no other path
    sent shares it (a server may keep only that part of an upload's filename)."""
    by_base: dict[str, list[str]] = {}
    for path in paths:
        by_base.setdefault(os.path.basename(path), []).append(path)
    names = {base: found[0] for base, found in by_base.items() if len(found) == 1}
    names.update({path: path for path in paths})
    return names


def result_of_item(item: Any, kind: str, job_id: str, names: dict[str, str] | None = None) -> Result:
    """A job's result object (the worker's response shape) as a written Result; `names` maps an
    upload's `image_file_name` back to the path sent (see :func:`sent_names`)."""
    if not isinstance(item, dict):
        return Result(f"{job_id}/?", ok=False, error_code="invalid_answer",
                      error_message=f"a result of job {job_id} is not an object")
    path = item.get("image_file_name") or item.get("image_id") or "?"
    if kind == UPLOAD and names:
        path = names.get(str(path), path)
    elif kind != UPLOAD and item.get("image_bucket") and item.get("image_key"):
        path = f"s3://{item['image_bucket']}/{item['image_key']}"
    extra = {"job_id": job_id, "image_id": item.get("image_id")}
    common: dict[str, Any] = {"request_id": item.get("request_id"), "model": item.get("model"),
                              "model_version": item.get("model_version"), "timing_ms": item.get("timing_ms"),
                              "extra": extra}
    error = item.get("error")
    if error is None and isinstance(item.get("predictions"), list):
        return Result(str(path), ok=True, predictions=item["predictions"], **common)
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return Result(str(path), ok=False, error_code=str(code or "invalid_answer"),
                  error_message=str(message or "the result holds neither predictions nor an error"), **common)


async def run_jobs(files: list[str], s3_objects: list[S3Object], s3_prefixes: list[S3Prefix],
                   settings: RunSettings, writer: ResultWriter, progress: Progress, *, poll_s: float = 1.0) -> Outcome:
    state = _State()
    plan = await asyncio.to_thread(plan_submissions, files, s3_objects, s3_prefixes)
    async with open_session(settings) as session:
        try:
            await preflight(session, settings)
            for submission in plan:
                ticket = await _submit(session, settings, submission, writer, state)
                if ticket is not None:
                    state.tickets.append(ticket)
                    progress.message(f"job {ticket.job_id}: {submission.describe()} "
                                     f"({_plural(ticket.images, 'image')})")
            await _follow(session, settings, state, progress, poll_s)
            for ticket in state.tickets:
                await _collect(session, settings, ticket, writer, state.outcome)
        except RunStopped as stop:
            state.outcome.stopped = stop.message
    progress.set_counts(state.outcome.ok, state.outcome.failed)
    return state.outcome


def _jobs_url(settings: RunSettings, job_id: str | None = None) -> str:
    return settings.base_url + "/v1/jobs" + (f"/{job_id}" if job_id else "")


async def _submit(session: aiohttp.ClientSession, settings: RunSettings, submission: Submission,
                  writer: ResultWriter, state: _State) -> Ticket | None:
    if submission.kind == UPLOAD:
        parts: list[tuple[str, bytes]] = []
        for path in submission.items:
            try:
                parts.append((path, await asyncio.to_thread(_read, path)))
            except OSError as exc:
                await asyncio.to_thread(writer.write, Result(path, ok=False, error_code="unreadable_file",
                                                             error_message=exc.strerror or str(exc)))
                state.outcome.failed += 1
        if not parts:
            return None

        def form() -> aiohttp.FormData:
            # Unquoted: aiohttp would otherwise percent-encode the "/" of a path in the filename.
            data = aiohttp.FormData(quote_fields=False)
            for path, content in parts:
                data.add_field("image", content, filename=path, content_type=content_type_of(path))
            return data

        answer = await send(session, "POST", _jobs_url(settings), policy=settings.policy, body=form,
                            params=settings.query())
    else:
        document = {"prefix": submission.items[0]} if submission.kind == PREFIX else {"images": list(submission.items)}
        answer = await send(session, "POST", _jobs_url(settings), policy=settings.policy, json_body=document,
                            params=settings.query())
    reply = answer.json()
    if answer.status not in (200, 201, 202) or not isinstance(reply, dict) or not reply.get("job_id"):
        code, message = error_of(answer.status, answer.body)
        raise RunStopped(f"the server did not take the job of {submission.describe()} "
                         f"(HTTP {answer.status} {code}): {message}")
    return Ticket(str(reply["job_id"]), submission, images=_count(reply.get("images")),
                  status=str(reply.get("status") or "queued"))


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _count(value: Any) -> int:
    """`images` is a count; a list of them is counted too."""
    if isinstance(value, list):
        return len(value)
    return value if isinstance(value, int) and value >= 0 else 0


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


async def _fetch(session: aiohttp.ClientSession, settings: RunSettings, job_id: str, offset: int,
                 limit: int) -> dict[str, Any]:
    answer = await send(session, "GET", _jobs_url(settings, job_id), policy=settings.policy,
                        params={"offset": str(offset), "limit": str(limit)})
    document = answer.json()
    if answer.status != 200 or not isinstance(document, dict):
        code, message = error_of(answer.status, answer.body)
        raise RunStopped(f"cannot read job {job_id} (HTTP {answer.status} {code}): {message}")
    return document


async def _follow(session: aiohttp.ClientSession, settings: RunSettings, state: _State, progress: Progress,
                  poll_s: float) -> None:
    while True:
        for ticket in state.tickets:
            if ticket.running:
                document = await _fetch(session, settings, ticket.job_id, 0, 1)
                ticket.status = str(document.get("status") or ticket.status)
                ticket.images = _count(document.get("images")) or ticket.images
                ticket.done, ticket.failed = _count(document.get("done")), _count(document.get("failed"))
        progress.set_counts(sum(t.done for t in state.tickets), sum(t.failed for t in state.tickets),
                            total=sum(t.images for t in state.tickets) or None)
        if not any(ticket.running for ticket in state.tickets):
            return
        await asyncio.sleep(poll_s)


async def _collect(session: aiohttp.ClientSession, settings: RunSettings, ticket: Ticket, writer: ResultWriter,
                   outcome: Outcome) -> None:
    async def page(offset: int, limit: int) -> list[Any]:
        results = (await _fetch(session, settings, ticket.job_id, offset, limit)).get("results")
        return results if isinstance(results, list) else []

    names = sent_names(ticket.submission.items) if ticket.submission.kind == UPLOAD else None
    received = 0
    async for item in iter_results(page, ticket.images):
        received += 1
        result = result_of_item(item, ticket.submission.kind, ticket.job_id, names)
        await asyncio.to_thread(writer.write, result)
        if result.ok:
            outcome.ok += 1
        else:
            outcome.failed += 1
    missing = ticket.images - received
    if missing > 0:
        outcome.failed += missing
        outcome.notes.append(f"job {ticket.job_id} ended {ticket.status} with {missing} images without a result")
