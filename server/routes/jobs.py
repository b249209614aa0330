"""/v1/jobs: bulk classification through the queue backend (docs/jobs.md).

A job is taken at once (202) and classified by the workers at their pace; its owner polls it for
progress and pages through its results. Only the caller that created a job can read or cancel it:
anyone else is answered `job_not_found`, exactly as for a job that does not exist. A server that
classifies in-process has no workers to hand a job to, and answers every route `jobs_unavailable`.

Events: the workers record one row per image; a job request refused here (bad model, bad body,
forbidden bucket, S3/SQS away) is recorded once, by `recording(...)`, as /v1/classify does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIType
from litestar.params import FromPath, QueryParameter

from batchserve.jobs.job_errors import JobNotFound, JobsUnavailable
from batchserve.jobs.job_inputs import (
    MAX_IMAGES_PER_JOB,
    BucketRule,
    list_prefix,
    parse_body,
    parse_s3_url,
)
from batchserve.jobs.job_manifest import (
    CANCELLED,
    JobInput,
    JobManifest,
    is_cursor,
    is_job_id,
    new_image_id,
    new_job_id,
    now,
)
from batchserve.jobs.job_results import StoredResult, page, progress
from batchserve.jobs.job_store import JobStore, storage_failure
from batchserve.jobs.job_submission import PlannedImage, submit_job, upload_key
from batchserve.jobs.web_tier import QueueBackend, unavailable
from batchserve.server.client_numbers import ascii_int
from batchserve.server.errors import V1_HANDLERS
from batchserve.server.recording import recording
from batchserve.server.request_context import caller_of
from batchserve.server.request_input import MULTIPART, read_body, read_images
from batchserve.server.routes.v1 import TOP_K_SCHEMA, VERSION_SCHEMA
from batchserve.server.schemas import (
    JobAccepted,
    JobLinks,
    JobList,
    JobListed,
    JobOut,
    JobsOperation,
    job_error_responses,
)
from batchserve.server.state import AppState
from batchserve.server.v1_classify import top_k_query, version_query
from batchserve.serving.classifier import validate_top_k
from batchserve.serving.errors import ErrorAnswer, InvalidParameter, UnsupportedMediaType

ROUTE = "jobs"  # the events' route of job requests (and of the workers' rows for job images)
PATH = "/v1/jobs"
DEFAULT_PAGE, MAX_PAGE = 100, 1000
DEFAULT_LISTED, MAX_LISTED = 20, 100
JSON_TYPES = ("application/json",)
_STORE = "job_store"
_NOT_NULL: dict[str, Any] = {"one_of": None}
OFFSET_SCHEMA = {**_NOT_NULL, "type": OpenAPIType.INTEGER, "minimum": 0, "maximum": MAX_IMAGES_PER_JOB, "default": 0}
PAGE_SCHEMA = {**_NOT_NULL, "type": OpenAPIType.INTEGER, "minimum": 0, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}
LISTED_SCHEMA = {**_NOT_NULL, "type": OpenAPIType.INTEGER, "minimum": 1, "maximum": MAX_LISTED,
                 "default": DEFAULT_LISTED}


def _queue_backend(app_state: AppState) -> QueueBackend:
    backend = app_state.backend
    if not isinstance(backend, QueueBackend):
        raise JobsUnavailable("this server classifies in-process and takes no jobs: jobs need workers, "
                              "behind `batchserve serve --backend queue --queue-name NAME`")
    return backend


def _store(request: Request, backend: QueueBackend) -> JobStore:
    """One store per app, so its cache of results outlives a request. While the backend cannot
    reach S3/SQS (or has not started yet) the answer is 503 at once, as for /v1/classify."""
    if not backend.ready:
        raise ErrorAnswer(unavailable("its last call failed, or it is still starting"))
    store = request.app.state.get(_STORE)
    if not isinstance(store, JobStore):
        store = request.app.state[_STORE] = JobStore(backend.aws, backend.names)
    return store


@contextmanager
def _storage(what: str) -> Iterator[None]:
    """S3 failing (refused, unreachable) is the service's trouble: 503 queue_unavailable, never a 500."""
    try:
        yield
    except Exception as exc:
        if storage_failure(exc):
            raise ErrorAnswer(unavailable(what, exc)) from exc
        raise


def _number(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    value = ascii_int(text, max_digits=9)
    if value is None or not low <= value <= high:
        raise InvalidParameter(f"{name} must be an integer from {low} to {high}, not {text[:40]!r}")
    return value


async def _plan(request: Request, app_state: AppState, backend: QueueBackend, job_id: str) -> list[PlannedImage]:
    """The job's images from the body: uploads (stored under jobs/<job_id>/), or s3:// objects."""
    media_type = request.content_type[0].lower()
    if media_type == MULTIPART:
        images, _ = await read_images(request, app_state.config.limits.max_images_per_request)
        planned = []
        for image in images:
            image_id = new_image_id()
            item = JobInput(image_id=image_id, image_file_name=image.filename, bucket=backend.names.input_bucket,
                            key=upload_key(job_id, image_id))
            planned.append(PlannedImage(item, image.data, image.content_type))
        return planned
    if media_type not in JSON_TYPES:
        raise UnsupportedMediaType(f"Content-Type {media_type!r} is not accepted: send multipart/form-data with "
                                   "'image' files, or application/json naming s3:// objects")
    body = parse_body(await read_body(request))
    rule = BucketRule(app_state.config.backend.allowed_buckets, backend.names.output_bucket)
    if body.images is not None:
        locations = [parse_s3_url(url) for url in body.images]
        for location in locations:
            rule.check(location)
    else:
        assert body.prefix is not None  # parse_body takes exactly one of the two
        prefix = parse_s3_url(body.prefix, prefix=True)
        rule.check(prefix)
        with _storage(f"listing {prefix}"):
            locations = await list_prefix(backend.aws, prefix)
    return [PlannedImage(JobInput(image_id=new_image_id(), image_file_name=location.key, bucket=location.bucket,
                                  key=location.key)) for location in locations]


async def _owned(request: Request, store: JobStore, job_id: str) -> JobManifest:
    """The caller's job `job_id`; JobNotFound when there is none, or it is someone else's."""
    refused = JobNotFound(f"there is no job {job_id[:80]!r} of yours")
    if not is_job_id(job_id):
        raise refused
    with _storage(f"reading job {job_id}"):
        manifest = await store.load(job_id)
    if manifest is None or manifest.owner != caller_of(request.scope).user:
        raise refused
    return manifest


async def _results(store: JobStore, manifest: JobManifest) -> dict[str, StoredResult]:
    with _storage(f"reading the results of job {manifest.job_id}"):
        return dict(await store.results(manifest))


def _job_out(manifest: JobManifest, results: dict[str, StoredResult], offset: int, limit: int) -> JobOut:
    state = progress(manifest, results)
    here = f"{PATH}/{manifest.job_id}"
    following = offset + limit
    links = JobLinks(here, f"{here}?offset={following}&limit={limit}" if limit and following < manifest.images
                     else None)
    return JobOut(job_id=manifest.job_id, status=state.status, images=manifest.images, done=state.done,
                  failed=state.failed, pending=state.pending, model=manifest.model, model_version=manifest.version,
                  top_k=manifest.top_k, created_at=manifest.created_at, offset=offset, limit=limit,
                  results=page(manifest, results, offset, limit), links=links)


class JobsController(Controller):
    path = PATH
    tags = ["jobs"]
    exception_handlers = V1_HANDLERS

    @post("/", status_code=202, summary="Submit a job: multipart 'image' files, or s3:// objects or a prefix (JSON)",
          operation_class=JobsOperation, responses=job_error_responses(400, 403, 404, 413, 415, 422, 503))
    async def create_job(
        self,
        request: Request,
        app_state: NamedDependency[AppState],
        model: Annotated[str | None, QueryParameter(description="model name (default: the server's default)")] = None,
        version: Annotated[str | None, QueryParameter(
            description="model version (default: the latest)", schema_extra=VERSION_SCHEMA)] = None,
        top_k: Annotated[str | None, QueryParameter(
            description="predictions per image, at most the model's number of classes", schema_extra=TOP_K_SCHEMA,
        )] = None,
    ) -> Response[JobAccepted]:
        backend = _queue_backend(app_state)
        serving = app_state.serving
        with recording(serving.recorder, request.scope, ROUTE, model) as record:
            app_state.refuse_if_draining()
            requested_version = record.version = version_query(version)
            requested_k = top_k_query(top_k)
            loaded = record.uses(serving.registry.lease(model, requested_version))
            k = validate_top_k(requested_k, loaded)
            store = _store(request, backend)
            job_id = new_job_id()
            planned = await _plan(request, app_state, backend, job_id)
            caller = record.caller
            manifest = JobManifest(job_id=job_id, owner=caller.user, created_at=caller.received_at or now(),
                                   request_id=caller.request_id, model=loaded.name, version=loaded.version, top_k=k,
                                   images=len(planned), inputs=[image.input for image in planned])
            await submit_job(backend, store, manifest, planned, loaded, caller)
        here = f"{PATH}/{job_id}"
        accepted = JobAccepted(job_id=job_id, status="queued", images=manifest.images, links=JobLinks(here))
        return Response(accepted, status_code=202, headers={"Location": here})

    @get("/", summary="The caller's jobs, newest first", responses=job_error_responses(404, 422, 503))
    async def list_jobs(
        self,
        request: Request,
        app_state: NamedDependency[AppState],
        limit: Annotated[str | None, QueryParameter(description="jobs per page",
                                                    schema_extra=LISTED_SCHEMA)] = None,
        cursor: Annotated[str | None, QueryParameter(description="where the page starts: `next` of the page before",
                                                     schema_extra=_NOT_NULL)] = None,
    ) -> JobList:
        backend = _queue_backend(app_state)
        size = _number(limit, "limit", DEFAULT_LISTED, 1, MAX_LISTED)
        if cursor is not None and not is_cursor(cursor):
            raise InvalidParameter("cursor must be the `next` value of an earlier page")
        owner = caller_of(request.scope).user
        with _storage("listing jobs"):
            summaries, following = await _store(request, backend).list_jobs(owner, size, cursor)
        listed = [JobListed(job_id=s.job_id, created_at=s.created_at, images=s.images, model=s.model,
                            model_version=s.version, top_k=s.top_k, cancelled=s.status == CANCELLED,
                            links=JobLinks(f"{PATH}/{s.job_id}")) for s in summaries]
        next_link = f"{PATH}?limit={size}&cursor={following}" if following else None
        return JobList(jobs=listed, next=following, links=JobLinks(PATH, next_link))

    @get("/{job_id:str}", summary="A job's status and a page of its results",
         responses=job_error_responses(404, 422, 503))
    async def get_job(
        self,
        request: Request,
        app_state: NamedDependency[AppState],
        job_id: FromPath[str],
        offset: Annotated[str | None, QueryParameter(description="first result of the page (manifest order)",
                                                     schema_extra=OFFSET_SCHEMA)] = None,
        limit: Annotated[str | None, QueryParameter(description="results per page (0: the status alone)",
                                                    schema_extra=PAGE_SCHEMA)] = None,
    ) -> JobOut:
        backend = _queue_backend(app_state)
        first = _number(offset, "offset", 0, 0, MAX_IMAGES_PER_JOB)
        size = _number(limit, "limit", DEFAULT_PAGE, 0, MAX_PAGE)
        store = _store(request, backend)
        manifest = await _owned(request, store, job_id)
        return _job_out(manifest, await _results(store, manifest), first, size)

    @delete("/{job_id:str}", status_code=200, summary="Cancel what of a job has not run yet",
            responses=job_error_responses(404, 503))
    async def cancel_job(self, request: Request, app_state: NamedDependency[AppState],
                         job_id: FromPath[str]) -> JobOut:
        backend = _queue_backend(app_state)
        store = _store(request, backend)
        manifest = await _owned(request, store, job_id)
        results = await _results(store, manifest)
        if manifest.status != CANCELLED and progress(manifest, results).pending:
            manifest = msgspec.structs.replace(manifest, status=CANCELLED)
            with _storage(f"cancelling job {job_id}"):
                await store.save(manifest)
        return _job_out(manifest, results, 0, 0)
