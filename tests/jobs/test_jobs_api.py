"""/v1/jobs against moto's server: a real web tier (`serve --backend queue --auth required`) and a real
`batchserve worker`, shared by the module; the worker starts only once the first test has cancelled
a job, so that job's images are still waiting when it is cancelled."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest

from batchserve.jobs import resources
from batchserve.jobs.aws import AwsClients, connect
from batchserve.jobs.config import QueueConfig, ResourceNames
from batchserve.jobs.job_cache import JobCache
from batchserve.jobs.job_inputs import MAX_IMAGES_PER_JOB
from batchserve.jobs.job_manifest import CANCELLED, JobInput, JobManifest, new_image_id, new_job_id, now
from batchserve.jobs.job_results import StoredResult, progress
from batchserve.jobs.job_store import JobStore
from batchserve.jobs.job_submission import PlannedImage, submit_job, upload_key
from batchserve.jobs.messages import ErrorBody, Prediction, Result, encode, event_id, result_key
from batchserve.jobs.web_tier import QueueBackend, WebTierSettings
from batchserve.loadtest.server_process import ServerProcess
from batchserve.loadtest.workload import LabelledImage, load_manifest
from batchserve.server.app import create_app
from batchserve.server.options import build_config
from batchserve.serving.config import ServingConfig
from batchserve.serving.errors import ErrorAnswer
from batchserve.serving.recording import Caller
from batchserve.serving.registry import ModelRegistry
from tests.jobs.queue_helpers import AWS_ENV, WorkerProcess, event_rows, unique_name, wait_until
from tests.server.keyring import add_key

T = TypeVar("T")
MODEL = "efficientnet_lite0"
FINISH_TIMEOUT_S = 60
CORRUPT = b"\xff\xd8\xff\xe0 this is not really a JPEG" * 4


def run_sync(work: Awaitable[T]) -> T:
    """An async set-up step from a module fixture, on a loop of its own (never a test's loop)."""
    async def main() -> T:
        return await work

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


@dataclass
class Setup:
    config: QueueConfig
    photos: str  # a bucket of the module's own, named by --allowed-buckets
    env: dict[str, str]
    cwd: Path
    web: ServerProcess
    web_events: Path
    worker_events: Path
    alice: str
    bob: str
    built_models: Path
    worker: WorkerProcess | None = None

    @property
    def names(self) -> ResourceNames:
        return self.config.names


async def bring_up(config: QueueConfig, photos: str, images: list[LabelledImage]) -> None:
    async with connect(config) as aws:
        await resources.up(aws, config)
        await aws.s3.create_bucket(Bucket=photos)
        for image in images:
            await aws.s3.put_object(Bucket=photos, Key=f"album/{image.name}", Body=image.data,
                                    ContentType=image.content_type)


async def bring_down(config: QueueConfig, photos: str) -> None:
    async with connect(config) as aws:
        await resources.down(aws, config.names)
        listing = await aws.s3.list_objects_v2(Bucket=photos)
        for item in listing.get("Contents", []):
            await aws.s3.delete_object(Bucket=photos, Key=item["Key"])
        await aws.s3.delete_bucket(Bucket=photos)


@pytest.fixture(scope="module")
def photos() -> list[LabelledImage]:
    from tests.conftest import IMAGES

    return load_manifest(IMAGES)


@pytest.fixture(scope="module")
def setup(moto_endpoint: str, built_models: Path, photos: list[LabelledImage],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cwd = tmp_path_factory.mktemp("jobs-api")
    config = QueueConfig(queue_name=unique_name("j"), aws_endpoint_url=moto_endpoint)
    bucket = f"{config.queue_name}-photos"
    env = {**AWS_ENV, "AWS_ENDPOINT_URL": moto_endpoint}
    with pytest.MonkeyPatch.context() as patch:  # for the whole module: the tests' own env comes later
        for name, value in env.items():
            patch.setenv(name, value)
        yield from _set_up(config, bucket, env, cwd, built_models, photos)


def _set_up(config: QueueConfig, bucket: str, env: dict[str, str], cwd: Path, built_models: Path,
            photos: list[LabelledImage]) -> Iterator[Setup]:
    run_sync(bring_up(config, bucket, photos))
    web_events = cwd / "web-events.sqlite3"  # the web tier's events, and the API keys
    alice = run_sync(add_key(web_events, "alice", ("classify",))).key
    bob = run_sync(add_key(web_events, "bob", ("classify",))).key
    web = ServerProcess("--backend", "queue", "--queue-name", str(config.queue_name), "--model-repo",
                        str(built_models), "--models", MODEL, "--auth", "required", "--events-path", str(web_events),
                        "--journal-dir", str(cwd / "web-journal"), "--events-flush-interval-ms", "50",
                        "--allowed-buckets", bucket, env=env, cwd=cwd)
    made = Setup(config, bucket, env, cwd, web, web_events, cwd / "worker-events.sqlite3", alice, bob, built_models)
    web.start()
    try:
        yield made
    finally:
        if made.worker is not None:
            made.worker.stop()
        web.stop()
        run_sync(bring_down(config, bucket))


@pytest.fixture(scope="module")
def worker(setup: Setup) -> Iterator[WorkerProcess]:
    process = WorkerProcess(setup.names.name, "--model-repo", str(setup.built_models), "--models", MODEL,
                            cwd=setup.cwd, events_path=setup.worker_events, env=setup.env)
    setup.worker = process
    process.start()
    yield process


@pytest.fixture
async def client(setup: Setup) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=setup.web.url, timeout=30) as http:
        yield http


def key(api_key: str, request_id: str | None = None) -> dict[str, str]:
    return {"X-API-Key": api_key, **({"X-Request-ID": request_id} if request_id else {})}


def multipart(images: list[tuple[str, bytes, str]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", image) for image in images]


async def finished(client: httpx.AsyncClient, job_id: str, api_key: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        answer = await client.get(f"/v1/jobs/{job_id}", params={"limit": "0"}, headers=key(api_key))
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return None if body["status"] in ("queued", "running") else body

    found: dict[str, Any] = await wait_until(check, FINISH_TIMEOUT_S, f"job {job_id} to finish")
    return found


async def submitted(client: httpx.AsyncClient, api_key: str, **request: Any) -> dict[str, Any]:
    answer = await client.post("/v1/jobs", headers=key(api_key), **request)
    assert answer.status_code == 202, answer.text
    body: dict[str, Any] = answer.json()
    assert answer.headers["location"] == body["links"]["self"] == f"/v1/jobs/{body['job_id']}"
    return body


async def all_results(client: httpx.AsyncClient, job_id: str, api_key: str) -> list[dict[str, Any]]:
    answer = await client.get(f"/v1/jobs/{job_id}", params={"limit": "1000"}, headers=key(api_key))
    assert answer.status_code == 200, answer.text
    results: list[dict[str, Any]] = answer.json()["results"]
    return results


async def test_a_job_cancelled_before_any_worker_runs_is_answered_cancelled(
        setup: Setup, client: httpx.AsyncClient, photos: list[LabelledImage], aws: AwsClients,
        request: pytest.FixtureRequest) -> None:
    assert setup.worker is None, "this test must run before the module's worker starts"
    files = [(p.name, p.data, p.content_type) for p in photos[:2]]
    job = await submitted(client, setup.alice, files=multipart(files))
    assert (job["status"], job["images"]) == ("queued", 2)
    job_id = job["job_id"]
    waiting = (await client.get(f"/v1/jobs/{job_id}", headers=key(setup.alice))).json()
    assert (waiting["status"], waiting["done"], waiting["failed"], waiting["pending"]) == ("queued", 0, 0, 2)
    assert [r["status"] for r in waiting["results"]] == ["pending", "pending"]

    refused = await client.delete(f"/v1/jobs/{job_id}", headers=key(setup.bob))
    assert (refused.status_code, refused.json()["error"]["code"]) == (404, "job_not_found")
    cancelled = await client.delete(f"/v1/jobs/{job_id}", headers=key(setup.alice))
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["failed"], cancelled.json()["pending"]) == ("cancelled", 2, 0)

    request.getfixturevalue("worker")  # now the workers come, and find the job cancelled
    prefix = f"{job_id}/"

    async def stored() -> list[str]:
        listing = await aws.s3.list_objects_v2(Bucket=setup.names.output_bucket, Prefix=prefix)
        return [item["Key"] for item in listing.get("Contents", []) if not item["Key"].endswith("/job.json")]

    keys = await wait_until(lambda: _at_least(stored, 2), FINISH_TIMEOUT_S, "the workers' cancelled results")
    for stored_key in keys:
        body = await aws.s3.get_object(Bucket=setup.names.output_bucket, Key=stored_key)
        async with body["Body"] as stream:
            result = json.loads(await stream.read())
        assert result["error"]["code"] == "cancelled" and job_id in result["error"]["message"], result
        assert "predictions" not in result
    image_ids = {r["image_id"] for r in waiting["results"]}
    rows = await wait_until(lambda: _rows(setup.worker_events, {event_id(i) for i in image_ids}), 10,
                            "the cancelled images' events")
    assert sorted((r["route"], r["status"], r["error_code"], r["user_name"]) for r in rows) == [
        ("jobs", 409, "cancelled", "alice")] * 2
    final = (await client.get(f"/v1/jobs/{job_id}", headers=key(setup.alice))).json()
    assert (final["status"], final["done"], final["failed"]) == ("cancelled", 0, 2)


async def _at_least(read: Any, count: int) -> Any:
    found = await read()
    return found if len(found) >= count else None


async def _rows(path: Path, ids: set[str]) -> list[dict[str, Any]] | None:
    rows = [r for r in event_rows(path) if r["event_id"] in ids]
    return rows if len(rows) == len(ids) else None


async def test_an_upload_job_with_a_corrupt_file_ends_partial_with_the_right_labels(
        setup: Setup, worker: WorkerProcess, client: httpx.AsyncClient, photos: list[LabelledImage]) -> None:
    files = [(p.name, p.data, p.content_type) for p in photos] + [("broken.jpg", CORRUPT, "image/jpeg")]
    job = await submitted(client, setup.alice, files=multipart(files), params={"top_k": "3", "model": MODEL})
    assert job["images"] == len(files)
    status = await finished(client, job["job_id"], setup.alice)
    assert (status["status"], status["done"], status["failed"], status["pending"]) == ("partial", len(photos), 1, 0)
    assert (status["model"], status["model_version"], status["top_k"]) == (MODEL, 1, 3)

    # Pages of two, in upload order, each pointing at the next.
    results, link = [], f"/v1/jobs/{job['job_id']}?offset=0&limit=2"
    while link:
        page = (await client.get(link, headers=key(setup.alice))).json()
        results += page["results"]
        link = page["links"].get("next")
    assert [r["image_file_name"] for r in results] == [name for name, _, _ in files]
    for photo, result in zip(photos, results, strict=False):
        ranked = [p["class_id"] for p in result["predictions"]]
        assert result["status"] == "done" and len(ranked) == 3 and photo.expected.check(ranked), result
        assert result["prediction_value"] == result["predictions"][0]["label"]
        assert result["image_bucket"] == setup.names.input_bucket
        assert result["image_key"] == upload_key(job["job_id"], result["image_id"])
    broken = results[-1]
    assert (broken["status"], broken["error"]["code"]) == ("failed", "invalid_image")
    past_the_end = (await client.get(f"/v1/jobs/{job['job_id']}?offset=9&limit=5", headers=key(setup.alice))).json()
    assert past_the_end["results"] == [] and "next" not in past_the_end["links"]

    rows = await wait_until(lambda: _rows(setup.worker_events, {event_id(r["image_id"]) for r in results}), 10,
                            "one event per image")
    assert sorted(r["status"] for r in rows) == [200] * len(photos) + [400]
    assert {(r["route"], r["user_name"], r["request_id"]) for r in rows} == {
        ("jobs", "alice", results[0]["request_id"])}


async def test_s3_objects_and_prefixes_of_allowed_buckets_only(
        setup: Setup, worker: WorkerProcess, client: httpx.AsyncClient, photos: list[LabelledImage]) -> None:
    urls = [f"s3://{setup.photos}/album/{p.name}" for p in photos] + [f"s3://{setup.photos}/album/missing.jpg"]
    named = await submitted(client, setup.alice, json={"images": urls}, params={"top_k": "2"})
    by_prefix = await submitted(client, setup.alice, json={"prefix": f"s3://{setup.photos}/album/"})
    assert (named["images"], by_prefix["images"]) == (len(urls), len(photos))

    status = await finished(client, named["job_id"], setup.alice)
    assert (status["status"], status["done"], status["failed"]) == ("partial", len(photos), 1)
    results = await all_results(client, named["job_id"], setup.alice)
    assert [f"s3://{r['image_bucket']}/{r['image_key']}" for r in results] == urls
    assert results[-1]["error"]["code"] == "image_not_found"
    for photo, result in zip(photos, results, strict=False):
        assert photo.expected.check([p["class_id"] for p in result["predictions"]]), result
    status = await finished(client, by_prefix["job_id"], setup.alice)
    assert (status["status"], status["done"], status["failed"]) == ("done", len(photos), 0)
    listed = await all_results(client, by_prefix["job_id"], setup.alice)
    assert sorted(r["image_key"] for r in listed) == sorted(f"album/{p.name}" for p in photos)

    refusals = {"input": {"prefix": f"s3://{setup.names.input_bucket}/"},
                "output": {"images": [f"s3://{setup.names.output_bucket}/{named['job_id']}/job.json"]},
                "other": {"images": [urls[0], "s3://some-other-bucket/cat.jpg"]}}
    for name, body in refusals.items():
        answer = await client.post("/v1/jobs", json=body, headers=key(setup.alice, f"refused-{name}"))
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "forbidden"
    assert "--allowed-buckets" in answer.json()["error"]["message"]
    rows = await wait_until(lambda: _by_request(setup.web_events, {f"refused-{n}" for n in refusals}), 10,
                            "the refusals' events")
    assert sorted((r["route"], r["status"], r["error_code"]) for r in rows) == [("jobs", 403, "forbidden")] * 3


async def _by_request(path: Path, request_ids: set[str]) -> list[dict[str, Any]] | None:
    rows = event_rows(path, request_ids)
    return rows if {r["request_id"] for r in rows} == request_ids else None


async def test_only_the_owner_reads_lists_and_cancels_a_job(setup: Setup, client: httpx.AsyncClient) -> None:
    url = f"s3://{setup.photos}/album/missing.jpg"
    first = await submitted(client, setup.bob, json={"images": [url]})
    second = await submitted(client, setup.bob, json={"images": [url, url]})
    for job in (first, second):
        for method in ("GET", "DELETE"):
            answer = await client.request(method, f"/v1/jobs/{job['job_id']}", headers=key(setup.alice))
            assert (answer.status_code, answer.json()["error"]["code"]) == (404, "job_not_found"), answer.text
    assert (await client.get(f"/v1/jobs/{first['job_id']}")).status_code == 401  # no key at all
    for malformed in ("_index", "sync", "-x", "a" * 129, "job.json%00"):
        answer = await client.get(f"/v1/jobs/{malformed}", headers=key(setup.bob))
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "job_not_found"), (malformed, answer.text)

    newest = (await client.get("/v1/jobs", params={"limit": "1"}, headers=key(setup.bob))).json()
    assert [j["job_id"] for j in newest["jobs"]] == [second["job_id"]]
    assert newest["jobs"][0]["images"] == 2 and newest["next"]
    older = (await client.get(newest["links"]["next"], headers=key(setup.bob))).json()
    assert [j["job_id"] for j in older["jobs"]] == [first["job_id"]]
    assert older["next"] is None
    theirs = (await client.get("/v1/jobs", params={"limit": "100"}, headers=key(setup.alice))).json()
    assert not {first["job_id"], second["job_id"]} & {j["job_id"] for j in theirs["jobs"]}
    bad_cursor = await client.get("/v1/jobs", params={"cursor": "../x"}, headers=key(setup.bob))
    assert (bad_cursor.status_code, bad_cursor.json()["error"]["code"]) == (422, "invalid_parameter")


async def test_malformed_job_requests_get_a_json_4xx_and_one_event_each(
        setup: Setup, client: httpx.AsyncClient) -> None:
    image = f"s3://{setup.photos}/album/coffee.jpg"
    too_many = {"images": [image] * (MAX_IMAGES_PER_JOB + 1)}
    cases: dict[str, tuple[dict[str, Any], int, str]] = {
        "not-json": ({"content": b"{images", "headers": {"Content-Type": "application/json"}}, 400,
                     "invalid_request"),
        "not-a-list": ({"json": {"images": image}}, 422, "invalid_parameter"),
        "no-key": ({"json": {"images": [f"s3://{setup.photos}"]}}, 422, "invalid_parameter"),
        "not-s3": ({"json": {"images": ["https://example.com/cat.jpg"]}}, 422, "invalid_parameter"),
        "empty": ({"json": {"images": []}}, 422, "invalid_parameter"),
        "both": ({"json": {"images": [image], "prefix": f"s3://{setup.photos}/"}}, 422, "invalid_parameter"),
        "unknown-field": ({"json": {"image": [image]}}, 422, "invalid_parameter"),
        "empty-prefix": ({"json": {"prefix": f"s3://{setup.photos}/nothing-here/"}}, 422, "invalid_parameter"),
        "too-many": ({"json": too_many}, 413, "payload_too_large"),
        "unknown-model": ({"json": {"images": [image]}, "params": {"model": "nope"}}, 404, "model_not_found"),
        "bad-top-k": ({"json": {"images": [image]}, "params": {"top_k": "0"}}, 422, "invalid_parameter"),
        "text": ({"content": b"s3://x/y", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        "no-files": ({"files": [("other", ("a.txt", b"x", "text/plain"))]}, 400, "invalid_request"),
    }
    for name, (request, status, code) in cases.items():
        headers = {**request.pop("headers", {}), **key(setup.alice, f"bad-{name}")}
        answer = await client.post("/v1/jobs", headers=headers, **request)
        assert answer.status_code == status, (name, answer.text)
        assert answer.json()["error"]["code"] == code, (name, answer.text)
    rows = await wait_until(lambda: _by_request(setup.web_events, {f"bad-{n}" for n in cases}), 10,
                            "one event per refused job request")
    assert len(rows) == len(cases)
    assert {r["request_id"]: (r["route"], r["status"], r["error_code"]) for r in rows} == {
        f"bad-{name}": ("jobs", status, code) for name, (_, status, code) in cases.items()}


async def test_a_server_that_classifies_in_process_answers_jobs_unavailable(built_models: Path,
                                                                            tmp_path: Path) -> None:
    config = build_config({"model_repo": built_models, "models": ("tiny",), "events": False,
                           "journal_dir": tmp_path / "journal"})
    app = create_app(config)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as direct:
            answers = [await direct.post("/v1/jobs", json={"images": ["s3://b/k"]}),
                       await direct.get("/v1/jobs"), await direct.get("/v1/jobs/abc"),
                       await direct.delete("/v1/jobs/abc")]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        error = answer.json()["error"]
        assert error["code"] == "jobs_unavailable" and "--backend queue" in error["message"]


# ---- the job store and the submission, in this process ------------------------------------------------
def _manifest(names: ResourceNames, count: int, owner: str = "carol") -> JobManifest:
    job_id = new_job_id()
    inputs = []
    for _ in range(count):
        image_id = new_image_id()
        inputs.append(JobInput(image_id=image_id, image_file_name=f"{image_id}.jpg", bucket=names.input_bucket,
                               key=upload_key(job_id, image_id)))
    return JobManifest(job_id=job_id, owner=owner, created_at=now(), request_id="r-1", model=MODEL, version=1,
                       top_k=1, images=count, inputs=inputs)


def _result(manifest: JobManifest, item: JobInput, label: str | None) -> bytes:
    common: dict[str, Any] = {"image_id": item.image_id, "request_id": "r-1", "image_file_name": None,
                              "model": MODEL, "model_version": 1, "job_id": manifest.job_id, "timing_ms": None}
    if label is None:
        return encode(Result(prediction_value=None, error=ErrorBody("dead_lettered", "no answer"), **common))
    return encode(Result(prediction_value=label, predictions=[Prediction(1, label, 0.9)], **common))


class CountingS3:
    """The real S3 client, counting the objects read."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self.reads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.s3, name)

    async def get_object(self, **params: Any) -> Any:
        self.reads.append(params["Key"])
        return await self.s3.get_object(**params)


async def test_polls_read_only_new_or_changed_results(setup: Setup, aws: AwsClients) -> None:
    counting = CountingS3(aws.s3)
    store = JobStore(dataclasses.replace(aws, s3=counting), setup.names, JobCache())
    manifest = _manifest(setup.names, 3)
    await store.save(manifest)
    first, second, third = manifest.inputs
    bucket = setup.names.output_bucket

    async def write(item: JobInput, label: str | None) -> None:
        await aws.s3.put_object(Bucket=bucket, Key=result_key(manifest.job_id, item.image_id),
                                Body=_result(manifest, item, label))

    loaded = await store.load(manifest.job_id)
    assert loaded == manifest
    assert progress(manifest, await store.results(manifest)).status == "queued"
    await write(first, None)
    counting.reads.clear()
    state = progress(manifest, await store.results(manifest))
    assert (state.status, state.done, state.failed, state.pending) == ("running", 0, 1, 2)
    assert counting.reads == [result_key(manifest.job_id, first.image_id)]
    counting.reads.clear()
    await store.results(manifest)
    assert counting.reads == []  # nothing new: nothing read
    await write(first, "tabby")  # a redriven dead letter that succeeded replaces its result
    await write(second, "espresso")
    await write(third, None)
    counting.reads.clear()
    state = progress(manifest, await store.results(manifest))
    assert (state.status, state.done, state.failed) == ("partial", 2, 1)
    assert sorted(counting.reads) == sorted(result_key(manifest.job_id, i.image_id) for i in manifest.inputs)
    counting.reads.clear()
    assert await store.load(manifest.job_id) == manifest and counting.reads == [
        f"{manifest.job_id}/job.json"]  # a conditional read: unchanged, so not parsed again


def test_progress_statuses() -> None:
    manifest = _manifest(ResourceNames.of("unit"), 2)
    first, second = (item.image_id for item in manifest.inputs)
    ok, bad = StoredResult("a", False, b"{}"), StoredResult("b", True, b"{}")
    assert progress(manifest, {}).status == "queued"
    assert progress(manifest, {first: ok}).status == "running"
    assert progress(manifest, {first: ok, second: ok}).status == "done"
    assert progress(manifest, {first: bad, second: bad}).status == "failed"
    assert progress(manifest, {first: ok, second: bad}).status == "partial"
    cancelled = progress(msgspec.structs.replace(manifest, status=CANCELLED), {first: ok})
    assert (cancelled.status, cancelled.done, cancelled.failed, cancelled.pending) == ("cancelled", 1, 1, 0)
    unsent = progress(msgspec.structs.replace(manifest, unsent=[second]), {})
    assert (unsent.status, unsent.failed, unsent.pending) == ("queued", 1, 1)


async def test_a_submission_that_fails_midway_answers_503_and_cancels_the_job(setup: Setup, aws: AwsClients) -> None:
    backend = QueueBackend(WebTierSettings(setup.config, timeout_ms=5000, reply_pollers=1, wait_time_s=1))
    await backend.start()
    try:
        store = JobStore(backend.aws, setup.names)
        manifest = _manifest(setup.names, 3, owner="dave")
        planned = [PlannedImage(item, b"\xff\xd8 image", "image/jpeg") for item in manifest.inputs]
        # The last image's upload goes to a bucket that does not exist: S3 refuses it midway.
        gone = dataclasses.replace(planned[2], input=JobInput(
            image_id=planned[2].input.image_id, image_file_name=None, bucket=f"{setup.names.name}-gone",
            key=planned[2].input.key))
        registry = ModelRegistry(ServingConfig(model_repo=setup.built_models, models=(MODEL,)), catalog_only=True)
        await registry.load_configured()
        try:
            with pytest.raises(ErrorAnswer) as refused:
                await submit_job(backend, store, manifest, [planned[0], planned[1], gone], registry.find(MODEL),
                                 Caller("r-503", "dave", None, None))
        finally:
            await registry.close()
        assert (refused.value.status, refused.value.code) == (503, "queue_unavailable")
        stored = await store.load(manifest.job_id)
        assert stored is not None and stored.status == CANCELLED
        assert stored.unsent == [gone.input.image_id]
        state = progress(stored, await store.results(stored))
        assert (state.status, state.failed, state.pending) == ("cancelled", 3, 0)
    finally:
        await backend.close(1.0)


def bulk_client(setup: Setup, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """`batchserve classify ... --jobs` against the web tier: exit status, its JSONL records, stderr."""
    out = setup.cwd / f"bulk-{new_job_id()}.jsonl"
    done = subprocess.run([sys.executable, "-m", "batchserve", "classify", *args, "--url", setup.web.url, "--jobs",
                           "--api-key", setup.alice, "--model", MODEL, "--top-k", "3", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **setup.env})
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return done.returncode, records, done.stderr


def test_the_bulk_client_submits_folders_and_s3_prefixes_as_jobs_and_writes_their_results(
        setup: Setup, worker: WorkerProcess, photos: list[LabelledImage], images_dir: Path) -> None:
    status, records, stderr = bulk_client(setup, str(images_dir))
    assert status == 0, stderr
    by_name = {Path(r["path"]).name: r for r in records}
    assert sorted(by_name) == sorted(p.name for p in photos)
    for photo in photos:
        record = by_name[photo.name]
        assert record["status"] == "ok" and photo.expected.check([p["class_id"] for p in record["predictions"]])
    status, records, stderr = bulk_client(setup, f"s3://{setup.photos}/album/")
    assert status == 0, stderr
    assert sorted(r["path"].rsplit("/", 1)[-1] for r in records) == sorted(p.name for p in photos)
    assert all(r["status"] == "ok" for r in records)
    # A bucket the web tier does not allow: the job is refused, and the client says so and fails.
    status, records, stderr = bulk_client(setup, "s3://someone-elses-photos/album/")
    assert status == 1 and records == [], stderr
    assert "403" in stderr and "someone-elses-photos" in stderr and "--allowed-buckets" in stderr
