"""`batchserve serve --backend queue`: a web tier answering /v1/classify through S3, SQS and real workers."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from batchserve.jobs import resources
from batchserve.jobs.reply_reaper import STALE_S, beat
from batchserve.loadtest.server_process import ServerProcess, ServerStartError
from batchserve.loadtest.workload import load_manifest
from tests.events.tcp_proxy import TcpProxy
from tests.jobs.queue_helpers import Deployment, WorkerProcess, event_rows, wait_until

pytestmark = pytest.mark.slow
ANSWER_TIMEOUT_S = 60.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60.0) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one request; error statuses are answers too."""
    method = "POST" if data is not None else "GET"
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            status, got, body = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        status, got, body = error.code, error.headers, error.read()
    return status, {k.lower(): v for k, v in got.items()}, json.loads(body or b"null")


def multipart(files: list[tuple[str, bytes, str]]) -> tuple[bytes, dict[str, str]]:
    boundary = "batchserve-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
             f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n" for name, data, kind in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"}


def web_tier(deployment: Deployment, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    events = ["--events-path", str(tmp_path / "web.sqlite3"), "--journal-dir", str(tmp_path / "web-journal"),
              "--events-flush-interval-ms", "50"]
    return ServerProcess("--backend", "queue", "--queue-name", deployment.name, "--models", "efficientnet_lite0",
                         *events, *args, env=env, cwd=tmp_path / "web")


async def reply_queues(deployment: Deployment) -> list[str]:
    return await resources.reply_queues(deployment.aws, deployment.names)


def fact_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT request_id, status, error_code FROM api_event_fact")]


async def test_the_web_tier_answers_as_direct_mode_and_the_worker_writes_the_events(
        deployment: Deployment, built_models: Path, images_dir: Path, tmp_path: Path) -> None:
    photos = load_manifest(images_dir)
    worker_events = tmp_path / "worker.sqlite3"
    server = web_tier(deployment, tmp_path, "--model-repo", str(built_models), "--max-body-bytes", "1000000")
    with WorkerProcess(deployment.name, "--model-repo", str(built_models), "--models", "efficientnet_lite0",
                       "--cache", "memory", cwd=tmp_path, events_path=worker_events) as worker:
        await asyncio.to_thread(server.start)
        try:
            assert len(await reply_queues(deployment)) == 1  # this instance's own
            answered: dict[str, dict[str, Any]] = {}
            for photo in photos:
                status, headers, body = await asyncio.to_thread(
                    call, f"{server.url}/v1/classify?top_k=3", photo.data,
                    {"Content-Type": photo.content_type, "X-Request-Id": f"web-{photo.name}", "User-Agent": "t/1"})
                assert status == 200, body
                assert photo.expected.check([p["class_id"] for p in body["predictions"]]), (photo.name, body)
                assert (body["request_id"], body["model"], body["model_version"]) == (
                    f"web-{photo.name}", "efficientnet_lite0", 1)
                assert len(body["predictions"]) == 3 and body["batch_size"] >= 1
                assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0
                assert "cache" not in body
                answered.setdefault(photo.name, body)
            # A photo seen before is answered from the worker's cache, and the answer says so.
            status, _, again = await asyncio.to_thread(call, f"{server.url}/v1/classify?top_k=3", photos[0].data,
                                                       {"Content-Type": photos[0].content_type})
            assert status == 200 and again["cache"] == "hit", again
            assert again["predictions"] == answered[photos[0].name]["predictions"]

            # Multipart: per-file answers in upload order, a file that is no image fails alone.
            data, kinds = multipart([("cat.jpg", photos[0].data, "image/jpeg"), ("notes.jpg", b"not an image",
                                                                                   "image/jpeg")])
            status, _, body = await asyncio.to_thread(call, f"{server.url}/v1/classify?top_k=1", data,
                                                      {**kinds, "X-Request-Id": "web-multi"})
            assert status == 200, body
            first, second = body["results"]
            assert first["filename"] == "cat.jpg" and len(first["predictions"]) == 1
            assert second["filename"] == "notes.jpg" and second["error"]["code"] == "invalid_image"

            # Refused here, as direct mode refuses them, without a trip through the queue.
            refusals = {
                "unknown model": ("/v1/classify?model=nope", photos[0].data, "image/jpeg", 404, "model_not_found"),
                "top_k past the classes": ("/v1/classify?top_k=1001", photos[0].data, "image/jpeg", 422,
                                           "invalid_parameter"),
                "a TIFF": ("/v1/classify", b"II*\x00" + b"\x00" * 64, "image/tiff", 415, "unsupported_media_type"),
            }
            for what, (path, payload, kind, want_status, want_code) in refusals.items():
                status, _, body = await asyncio.to_thread(
                    call, server.url + path, payload, {"Content-Type": kind})
                assert (status, body["error"]["code"]) == (want_status, want_code), what
            uploads = await deployment.aws.s3.list_objects_v2(Bucket=deployment.names.input_bucket)
            stored = uploads.get("KeyCount", 0)
            oversized = photos[0].data + b"\0" * 1_000_000
            status, _, body = await asyncio.to_thread(call, f"{server.url}/v1/classify", oversized,
                                                      {"Content-Type": "image/jpeg"})
            assert status == 413 and body["error"]["code"] == "payload_too_large", body
            uploads = await deployment.aws.s3.list_objects_v2(Bucket=deployment.names.input_bucket)
            assert uploads.get("KeyCount", 0) == stored  # refused before S3
            status, _, body = await asyncio.to_thread(call, f"{server.url}/v2/models/efficientnet_lite0/infer", b"{}",
                                                      {"Content-Type": "application/json"})
            assert status == 501 and "--backend direct" in body["error"]
            status, _, body = await asyncio.to_thread(call, f"{server.url}/v1/models")
            assert [m["name"] for m in body["models"]] == ["efficientnet_lite0"]
        finally:
            assert server.stop() == 0, server.log_tail()
        assert await reply_queues(deployment) == []  # deleted at shutdown
        assert worker.stop() == 0, worker.log()

    # One row per image, written by the worker with the caller the web tier saw; the web tier wrote
    # only the requests that never reached the queue.
    worker_rows = {r["request_id"]: r for r in event_rows(worker_events)}
    for photo in photos:
        row = worker_rows[f"web-{photo.name}"]
        # 127.0.0.0: the default --events-pii keeps an IPv4 address's /24, as direct mode records it.
        assert (row["status"], row["client_ip"], row["user_agent"], row["route"]) == (200, "127.0.0.0", "t/1", "v1")
    # The file that is no image never left the web tier (its first bytes are no image's): its row is the tier's.
    assert [r["status"] for r in event_rows(worker_events) if r["request_id"] == "web-multi"] == [200]
    web_rows = fact_rows(tmp_path / "web.sqlite3")
    assert sorted((r["status"], r["error_code"]) for r in web_rows) == [
        (400, "invalid_image"), (404, "model_not_found"), (413, "payload_too_large"), (415, "unsupported_media_type"),
        (422, "invalid_parameter"), (501, "not_supported")]
    assert [r["request_id"] for r in web_rows if r["status"] == 400] == ["web-multi"]


async def test_without_workers_a_request_answers_504_at_its_deadline(
        deployment: Deployment, built_models: Path, chelsea: bytes, tmp_path: Path) -> None:
    # Reply queues of two other instances: one killed long ago, one alive.
    sqs, prefix = deployment.aws.sqs, deployment.names.reply_prefix
    dead = (await sqs.create_queue(QueueName=f"{prefix}dead"))["QueueUrl"]
    alive = (await sqs.create_queue(QueueName=f"{prefix}alive"))["QueueUrl"]
    await beat(deployment.aws, dead, now=time.time() - STALE_S - 60)
    await beat(deployment.aws, alive)
    server = web_tier(deployment, tmp_path, "--model-repo", str(built_models), "--queue-timeout-ms", "400")
    await asyncio.to_thread(server.start)
    try:
        async def reaped() -> bool:
            return f"{prefix}dead" not in await reply_queues(deployment)

        await wait_until(reaped, 30, "the dead instance's reply queue to be reaped")
        assert f"{prefix}alive" in await reply_queues(deployment) and len(await reply_queues(deployment)) == 2
        status, headers, body = await asyncio.to_thread(call, f"{server.url}/v1/classify", chelsea,
                                                        {"Content-Type": "image/jpeg"})
        assert status == 504 and body["error"]["code"] == "deadline_exceeded", body
        # A shorter deadline of the request's own wins over the tier's.
        status, _, body = await asyncio.to_thread(call, f"{server.url}/v1/classify?timeout_ms=50", chelsea,
                                                  {"Content-Type": "image/jpeg"})
        assert status == 504, body
        assert (await deployment.depth())[0] == 2  # the messages wait for a worker
    finally:
        assert server.stop() == 0, server.log_tail()


async def test_a_small_image_travels_inside_its_message_and_every_image_is_stored(
        deployment: Deployment, built_models: Path, chelsea: bytes, tmp_path: Path) -> None:
    import base64
    import io

    from PIL import Image

    small = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(small, "PNG")
    server = web_tier(deployment, tmp_path, "--model-repo", str(built_models), "--queue-timeout-ms", "300",
                      "--queue-inline-max-bytes", str(len(chelsea) - 1))
    await asyncio.to_thread(server.start)
    try:
        for data, kind in ((small.getvalue(), "image/png"), (chelsea, "image/jpeg")):
            status, _, body = await asyncio.to_thread(call, f"{server.url}/v1/classify", data, {"Content-Type": kind})
            assert status == 504, body  # no worker runs: only the messages matter here
    finally:
        assert server.stop() == 0, server.log_tail()
    answer = await deployment.aws.sqs.receive_message(QueueUrl=deployment.requests_url, MaxNumberOfMessages=10,
                                                      WaitTimeSeconds=1)
    messages = {len(m.get("image_data") or ""): m for m in (json.loads(r["Body"]) for r in answer["Messages"])}
    assert len(messages) == 2, messages
    carried, by_key = messages[max(messages)], messages[0]
    assert base64.b64decode(carried["image_data"]) == small.getvalue()
    assert carried["image_content_type"] == "image/png"
    assert by_key["image_data"] is None and by_key["image_content_type"] is None
    for message, data in ((carried, small.getvalue()), (by_key, chelsea)):  # the bucket keeps every upload
        stored = await deployment.aws.s3.get_object(Bucket=message["image_bucket"], Key=message["image_key"])
        assert await stored["Body"].read() == data


async def test_s3_and_sqs_out_of_reach_answer_503_and_the_tier_recovers(
        deployment: Deployment, built_models: Path, chelsea: bytes, tmp_path: Path, moto_endpoint: str) -> None:
    proxy = TcpProxy("127.0.0.1", int(moto_endpoint.rsplit(":", 1)[1]))
    port = await proxy.start()
    # The simulated model on both tiers: this is about the path, not the model.
    server = web_tier(deployment, tmp_path, "--simulate-model", "1+0", "--queue-timeout-ms", "60000",
                      env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    worker = WorkerProcess(deployment.name, "--simulate-model", "1+0", cwd=tmp_path,
                           env={"AWS_ENDPOINT_URL": moto_endpoint})
    await asyncio.to_thread(worker.start)
    try:
        await asyncio.to_thread(server.start)  # in a thread: the proxy forwards on this event loop
        status, _, body = await asyncio.to_thread(call, f"{server.url}/v1/classify?model=simulated", chelsea,
                                                  {"Content-Type": "image/jpeg"})
        assert status == 200, body
        await proxy.cut()

        async def refused_quickly() -> Any:
            status, headers, body = await asyncio.to_thread(call, f"{server.url}/v1/classify?model=simulated", chelsea,
                                                            {"Content-Type": "image/jpeg"}, 30.0)
            return (status, body, headers) if status == 503 else None

        status, body, headers = await wait_until(refused_quickly, 60, "a 503 while S3/SQS are out of reach")
        assert body["error"]["code"] == "queue_unavailable" and "S3/SQS" in body["error"]["message"]
        assert int(headers["retry-after"]) >= 1

        async def unready() -> bool:
            return (await asyncio.to_thread(call, f"{server.url}/readyz"))[0] == 503

        await wait_until(unready, 60, "/readyz to say 503")
        await proxy.restore()

        async def answered() -> Any:
            status, _, body = await asyncio.to_thread(call, f"{server.url}/v1/classify?model=simulated", chelsea,
                                                      {"Content-Type": "image/jpeg"})
            return body if status == 200 else None

        body = await wait_until(answered, 90, "answers once S3/SQS are back", interval=0.5)
        assert body["model"] == "simulated" and len(body["predictions"]) == 5
    finally:
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(worker.stop)
        await proxy.close()


async def test_a_web_tier_without_its_deployment_exits_naming_queue_up(built_models: Path, tmp_path: Path) -> None:
    server = ServerProcess("--backend", "queue", "--queue-name", "nosuchdeployment", "--model-repo",
                           str(built_models), "--models", "efficientnet_lite0", "--no-events", cwd=tmp_path)
    with pytest.raises(ServerStartError) as failed:
        await asyncio.to_thread(server.start, 60)
    assert "batchserve queue up --name nosuchdeployment" in str(failed.value)


def test_the_queue_backend_needs_a_queue_name(tmp_path: Path) -> None:
    server = ServerProcess("--backend", "queue", "--no-events", cwd=tmp_path)
    with pytest.raises(ServerStartError) as failed:
        server.start(30)
    assert "--queue-name" in str(failed.value)
