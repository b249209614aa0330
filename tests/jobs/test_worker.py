"""`batchserve worker` processes against moto's server: answers, errors, redeliveries, shutdowns."""

from __future__ import annotations

import asyncio
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from batchserve.jobs.messages import event_id
from batchserve.loadtest.workload import load_manifest
from tests.events.tcp_proxy import TcpProxy
from tests.jobs.queue_helpers import Deployment, WorkerProcess, event_rows, wait_until

# Fast enough for a test, slow enough that a batch of 4 outlasts a 2 s visibility timeout when two wait.
SIMULATED = ("--simulate-model", "8+0.25")
ANSWER_TIMEOUT_S = 60
# The largest image the workers of these tests read: above the 34 KB sample photo.
MAX_IMAGE_BYTES = 64 * 1024


async def emptied(deployment: Deployment) -> bool:
    """Every request deleted: nothing waiting, nothing in flight (deletes follow answers by a flush)."""
    return await deployment.depth() == (0, 0)


async def test_images_in_give_correct_results_out_with_one_event_each(
        deployment: Deployment, built_models: Path, images_dir: Path, tmp_path: Path) -> None:
    photos = load_manifest(images_dir)
    reply_url = (await deployment.aws.sqs.create_queue(QueueName=f"{deployment.names.reply_prefix}web1"))["QueueUrl"]
    messages, expected = [], {}
    for copy in range(3):  # synchronous on NAME-responses, a job, synchronous on a web instance's reply queue
        routing: dict[str, Any] = [{}, {"job_id": "job-1"}, {"reply_to": reply_url}][copy]
        for photo in photos:
            key = f"uploads/{copy}/{photo.name}"
            await deployment.put_image(key, photo.data, photo.content_type)
            message = deployment.request(key, model="efficientnet_lite0", top_k=3, **routing)
            messages.append(message)
            expected[message["image_id"]] = (photo, message)
    events = tmp_path / "events.sqlite3"
    with WorkerProcess(deployment.name, "--model-repo", str(built_models), "--models", "efficientnet_lite0",
                       cwd=tmp_path, events_path=events) as worker:
        await deployment.send_all(messages)
        on_reply = {m["image_id"] for m in messages if "reply_to" in m}
        answers = await deployment.collect(set(expected) - on_reply, ANSWER_TIMEOUT_S)
        answers |= await deployment.collect(on_reply, ANSWER_TIMEOUT_S, url=reply_url)
        await wait_until(lambda: emptied(deployment), 30, "the request queue to empty")
        assert worker.stop() == 0, worker.log()

    for image_id, answer in answers.items():
        photo, message = expected[image_id]
        assert "error" not in answer, answer
        ranked = [p["class_id"] for p in answer["predictions"]]
        assert len(ranked) == 3 and photo.expected.check(ranked), (photo.name, answer)
        assert answer["prediction_value"] == answer["predictions"][0]["label"]
        assert (answer["request_id"], answer["image_file_name"], answer["job_id"]) == (
            message["request_id"], photo.name, message.get("job_id"))
        assert (answer["model"], answer["model_version"]) == ("efficientnet_lite0", 1)
        assert answer["batch_size"] >= 1 and answer["timing_ms"]["total"] >= answer["timing_ms"]["inference"] > 0
    assert sorted(await deployment.result_keys("sync/")) == sorted(
        f"sync/{m['image_id']}.json" for m in messages if "job_id" not in m)
    assert sorted(await deployment.result_keys("job-1/")) == sorted(
        f"job-1/{m['image_id']}.json" for m in messages if "job_id" in m)
    some = messages[0]
    assert await deployment.result_object(f"sync/{some['image_id']}.json") == answers[some["image_id"]]

    rows = {r["event_id"]: r for r in event_rows(events)}
    assert set(rows) == {event_id(i) for i in expected}
    for image_id, (_, message) in expected.items():
        row = rows[event_id(image_id)]
        assert (row["request_id"], row["status"]) == (message["request_id"], 200)
        assert row["model_name"] == "efficientnet_lite0"
        assert row["route"] == ("jobs" if "job_id" in message else "v1")
        assert (row["user_name"], row["client_ip"], row["user_agent"]) == ("k_test", "203.0.113.0", "queue-tests/1")
        assert datetime.fromisoformat(row["event_ts"]) == datetime.fromisoformat(message["received_at"])
        assert row["class_id"] == answers[image_id]["predictions"][0]["class_id"]


async def test_bad_messages_get_error_results_and_never_stop_the_worker(
        deployment: Deployment, tmp_path: Path, chelsea: bytes) -> None:
    await deployment.put_image("ok.jpg", chelsea)
    await deployment.put_image("garbage.jpg", b"this is not an image at all", "image/jpeg")
    await deployment.put_image("empty.jpg", b"", "image/jpeg")
    await deployment.put_image("big.jpg", bytes(2 * MAX_IMAGE_BYTES), "image/jpeg")
    reply_url = (await deployment.aws.sqs.create_queue(QueueName=f"{deployment.names.reply_prefix}web1"))["QueueUrl"]
    lacks_key = deployment.request("ok.jpg")
    del lacks_key["image_key"]
    cases = {
        "invalid_request": lacks_key,
        "model_not_found": deployment.request("ok.jpg", model="no-such-model"),
        "image_not_found": deployment.request("missing.jpg"),
        "invalid_image": deployment.request("garbage.jpg", reply_to=reply_url),
        "invalid_parameter": deployment.request("ok.jpg", top_k=5000),
        "empty_image": deployment.request("empty.jpg"),
        "payload_too_large": deployment.request("big.jpg"),
        # A reply queue outside the deployment is refused; the shared response queue answers instead.
        "invalid_reply": deployment.request("ok.jpg", reply_to="some-other-queue"),
    }
    good = deployment.request("ok.jpg", top_k=1)
    events = tmp_path / "events.sqlite3"
    with WorkerProcess(deployment.name, *SIMULATED, "--max-image-bytes", str(MAX_IMAGE_BYTES), cwd=tmp_path,
                       events_path=events) as worker:
        await deployment.send("{this is not json")
        await deployment.send_all([*cases.values(), good])
        on_reply = {cases["invalid_image"]["image_id"]}
        answers = await deployment.collect({m["image_id"] for m in cases.values()} - on_reply | {good["image_id"]},
                                           ANSWER_TIMEOUT_S)
        answers |= await deployment.collect(on_reply, ANSWER_TIMEOUT_S, url=reply_url)

        async def not_json_answered() -> list[dict[str, Any]]:
            await deployment.receive_responses()
            return [r for r in deployment.responses if r["image_id"] not in answers]

        (not_json,) = await wait_until(not_json_answered, ANSWER_TIMEOUT_S, "the answer to the message not in JSON")
        await wait_until(lambda: emptied(deployment), 30, "every bad message to be deleted")
        assert worker.process.poll() is None, worker.log()
        assert worker.stop() == 0, worker.log()

    assert not_json["error"]["code"] == "invalid_request" and "not a JSON object" in not_json["error"]["message"]
    for code, message in cases.items():
        answer = answers[message["image_id"]]
        assert answer["error"]["code"] == {"invalid_reply": "invalid_request", "empty_image": "invalid_image"}.get(
            code, code), answer
        assert "predictions" not in answer and answer["prediction_value"] is None
        assert answer["request_id"] == message["request_id"]
    assert "image_key" in answers[lacks_key["image_id"]]["error"]["message"]
    assert "no-such-model" in answers[cases["model_not_found"]["image_id"]]["error"]["message"]
    # The worker reads no more than its bound (+1 byte), and still says how large the image is.
    assert f"{2 * MAX_IMAGE_BYTES} bytes, more than the {MAX_IMAGE_BYTES}" in \
        answers[cases["payload_too_large"]["image_id"]]["error"]["message"]
    assert answers[good["image_id"]]["model"] == "simulated" and len(answers[good["image_id"]]["predictions"]) == 1
    # Error results are stored too (a job reports them), except for a message without a usable image id.
    assert len(await deployment.result_keys("sync/")) == len(cases) + 1
    assert await deployment.depth(deployment.names.dead_letters) == (0, 0)
    rows = event_rows(events)
    assert len(rows) == len(cases) + 2
    assert sorted(r["error_code"] or "ok" for r in rows) == sorted(
        ["invalid_request", "invalid_request", "model_not_found", "image_not_found", "invalid_image",
         "invalid_parameter", "invalid_image", "payload_too_large", "invalid_request", "ok"])
    assert "malformed" in worker.log()


async def test_an_image_delivered_twice_is_one_result_object_and_one_event(
        deployment: Deployment, tmp_path: Path, chelsea: bytes) -> None:
    await deployment.put_image("a.jpg", chelsea)
    first = deployment.request("a.jpg")
    again = {**first, "received_at": first["received_at"]}  # the same message, delivered a second time
    events = tmp_path / "events.sqlite3"
    with WorkerProcess(deployment.name, *SIMULATED, cwd=tmp_path, events_path=events) as worker:
        await deployment.send(first)
        await deployment.collect({first["image_id"]}, ANSWER_TIMEOUT_S)
        await deployment.send(again)

        async def answered_twice() -> bool:
            await deployment.receive_responses()
            return sum(r["image_id"] == first["image_id"] for r in deployment.responses) == 2

        await wait_until(answered_twice, ANSWER_TIMEOUT_S, "the second delivery's answer")
        await wait_until(lambda: emptied(deployment), 30, "both deliveries to be deleted")
        assert worker.stop() == 0, worker.log()
    assert await deployment.result_keys() == [f"sync/{first['image_id']}.json"]
    assert [r["event_id"] for r in event_rows(events)] == [event_id(first["image_id"])]


async def test_a_worker_without_its_queues_says_how_to_create_them(tmp_path: Path) -> None:
    worker = WorkerProcess("nosuchdeployment", *SIMULATED, cwd=tmp_path).start(wait_ready=False)
    assert worker.wait(60) == 1
    assert "batchserve queue up --name nosuchdeployment" in worker.log()


@pytest.mark.parametrize("argv", [[], ["--queue-name", "x", "--receive-max-messages", "11"]])
def test_a_worker_with_unusable_settings_exits_2(argv: list[str], tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "batchserve", "worker", *argv], capture_output=True, text=True,
                          timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "batchserve worker:" in done.stderr


def _log_counts(log: str) -> dict[str, int]:
    import re

    match = re.search(r"drained: (\d+) answered, (\d+) handed back to the queue, (\d+) deleted", log)
    assert match, log
    return dict(zip(("answered", "handed_back", "deleted"), map(int, match.groups()), strict=True))


async def test_an_image_that_waits_longer_than_the_visibility_timeout_is_answered_once(
        deployment: Deployment, tmp_path: Path, chelsea: bytes) -> None:
    await deployment.put_image("a.jpg", chelsea)
    messages = [deployment.request("a.jpg") for _ in range(6)]
    # Three batches of 2, one second each, against a 2 s visibility timeout: the last two images are
    # held for 3 s while the worker's long polls wait on the queue, so without extensions they would
    # come back to it (or to any worker) and be answered twice.
    # One long poll: moto's receive is not atomic (two concurrent polls can both take a message), and
    # what is checked here is the worker's own extensions, not moto's locking.
    slow = ("--simulate-model", "1000+0", "--max-batch-size", "2", "--max-held", "6", "--visibility-timeout-s", "2",
            "--pollers", "1")
    with WorkerProcess(deployment.name, *slow, cwd=tmp_path) as worker:
        await deployment.send_all(messages)
        await deployment.collect({m["image_id"] for m in messages}, ANSWER_TIMEOUT_S)
        await wait_until(lambda: emptied(deployment), 30, "every request to be deleted")
        assert worker.stop() == 0, worker.log()
    await deployment.receive_responses()
    assert sorted(r["image_id"] for r in deployment.responses) == sorted(m["image_id"] for m in messages)
    assert "delivered for the 2. time" not in worker.log()


@pytest.mark.parametrize("grace", ["20", "1.5"], ids=["held-work-finishes", "grace-runs-out"])
async def test_sigterm_drains_answering_what_it_holds_and_handing_back_the_rest(
        deployment: Deployment, tmp_path: Path, chelsea: bytes, grace: str) -> None:
    await deployment.put_image("a.jpg", chelsea)
    messages = [deployment.request("a.jpg") for _ in range(20)]
    events = tmp_path / "events.sqlite3"
    # Batches of 4 that take 2 s each, 8 held at most, a 3 s visibility timeout (extended every 1 s, so
    # a busy machine's slow SQS calls still land in time): the second batch's images wait 2 s and run
    # 2 s, so they are answered only once, if their visibility is extended.
    slow = ("--simulate-model", "2000+0", "--max-batch-size", "4", "--max-held", "8", "--pollers", "1",
            "--visibility-timeout-s", "3", "--shutdown-grace-s", grace)  # one poll: see the test above
    first = WorkerProcess(deployment.name, *slow, cwd=tmp_path, events_path=events).start()
    try:
        await deployment.send_all(messages)
        await wait_until(deployment.receive_responses, ANSWER_TIMEOUT_S, "a first answer")
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.log()
    finally:
        first.stop()
    counts = _log_counts(first.log())
    assert counts["deleted"] == counts["answered"] >= 1, counts
    if grace == "20":  # everything it held at the signal was answered, and it took nothing more
        assert counts["handed_back"] == 0 and counts["answered"] <= 8 + 4, counts
    else:
        assert counts["handed_back"] >= 1, counts
    await deployment.receive_responses()
    assert len(deployment.responses) == counts["answered"]
    # What it did not answer is waiting at once (handed back, not left to the visibility timeout).
    assert await deployment.depth() == (len(messages) - counts["answered"], 0)

    second = WorkerProcess(deployment.name, *SIMULATED, cwd=tmp_path, events_path=events).start()
    try:
        await deployment.collect({m["image_id"] for m in messages}, ANSWER_TIMEOUT_S)
        await wait_until(lambda: emptied(deployment), 30, "every request to be deleted")
        assert second.stop() == 0, second.log()
    finally:
        second.stop()
    # Each image answered once: nothing answered was left undeleted, nothing held was delivered twice.
    assert sorted(r["image_id"] for r in deployment.responses) == sorted(m["image_id"] for m in messages)
    assert len(event_rows(events)) == len(messages)
    assert "delivered for the 2. time" not in first.log()  # its visibility was extended while held


async def test_a_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(
        deployment: Deployment, tmp_path: Path, chelsea: bytes) -> None:
    await deployment.put_image("a.jpg", chelsea)
    messages = [deployment.request("a.jpg") for _ in range(16)]
    events = tmp_path / "events.sqlite3"
    slow = ("--simulate-model", "800+0", "--max-batch-size", "4", "--max-held", "8", "--visibility-timeout-s", "2")
    doomed = WorkerProcess(deployment.name, *slow, cwd=tmp_path, events_path=events).start()
    try:
        await deployment.send_all(messages)
        await wait_until(deployment.receive_responses, ANSWER_TIMEOUT_S, "a first answer")
        doomed.signal(signal.SIGKILL)
        doomed.wait(10)
    finally:
        doomed.stop()
    survivor = WorkerProcess(deployment.name, *SIMULATED, cwd=tmp_path, events_path=events).start()
    try:
        await deployment.collect({m["image_id"] for m in messages}, ANSWER_TIMEOUT_S)
        await wait_until(lambda: emptied(deployment), 30, "every request to be deleted")
        assert survivor.stop() == 0, survivor.log()
    finally:
        survivor.stop()
    assert "delivered for the 2. time" in survivor.log()  # what the killed worker held came back
    assert sorted(await deployment.result_keys()) == sorted(f"sync/{m['image_id']}.json" for m in messages)
    rows = event_rows(events)
    assert sorted(r["event_id"] for r in rows) == sorted(event_id(m["image_id"]) for m in messages)


async def test_a_worker_cut_off_from_s3_and_sqs_backs_off_and_recovers_without_losing_messages(
        deployment: Deployment, tmp_path: Path, chelsea: bytes, moto_endpoint: str) -> None:
    proxy = TcpProxy("127.0.0.1", int(moto_endpoint.rsplit(":", 1)[1]))
    port = await proxy.start()
    await deployment.put_image("a.jpg", chelsea)
    held = [deployment.request("a.jpg") for _ in range(4)]
    later = [deployment.request("a.jpg") for _ in range(6)]
    events = tmp_path / "events.sqlite3"
    # A receive whose answer the cut loses still takes its messages (as on AWS): they stay hidden until
    # their visibility timeout runs out, so it is short here, and so are the long polls the cut orphans.
    worker = WorkerProcess(deployment.name, "--simulate-model", "1500+0", "--max-batch-size", "4",
                           "--visibility-timeout-s", "3", "--wait-time-s", "1", cwd=tmp_path, events_path=events,
                           env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    worker.start(wait_ready=False)  # the proxy runs on this event loop: wait without blocking it

    async def logged(text: str) -> bool:
        assert worker.process.poll() is None, worker.log()
        return text in worker.log()

    try:
        await wait_until(lambda: logged("worker ready"), 90, "the worker to be ready")
        await deployment.send_all(held)
        await wait_until(lambda: _in_flight(deployment, len(held)), 30, "the worker to hold the first images")
        await proxy.cut()  # while it holds them: reading the images, extending and receiving fail
        await wait_until(lambda: logged("SQS unavailable"), 30, "the worker to notice SQS is gone")
        await wait_until(lambda: logged("retrying with backoff"), 30, "the worker to retry reading an image")
        await proxy.restore()
        await deployment.send_all(later)
        await deployment.collect({m["image_id"] for m in held + later}, ANSWER_TIMEOUT_S)
        await wait_until(lambda: emptied(deployment), 30, "every request to be deleted")
        # Stopped from a thread: the worker's last deletes go through the proxy on this event loop.
        assert await asyncio.to_thread(worker.stop) == 0, worker.log()
    finally:
        await asyncio.to_thread(worker.stop)
        await proxy.close()
    # At least once on the wire (a lost answer is sent again), exactly once where it is kept.
    assert {r["image_id"] for r in deployment.responses} == {m["image_id"] for m in held + later}
    assert sorted(await deployment.result_keys()) == sorted(f"sync/{m['image_id']}.json" for m in held + later)
    assert len(event_rows(events)) == len(held + later)
    assert await deployment.depth(deployment.names.dead_letters) == (0, 0)


async def _in_flight(deployment: Deployment, count: int) -> bool:
    return await deployment.depth() == (0, count)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_the_metrics_port_exports_batches_drift_and_message_counts(
        deployment: Deployment, tmp_path: Path, chelsea: bytes) -> None:
    from batchserve.loadtest.server_process import free_port

    await deployment.put_image("a.jpg", chelsea)
    messages = [deployment.request("a.jpg") for _ in range(8)]
    port = free_port()
    with WorkerProcess(deployment.name, *SIMULATED, "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
                       "--drift-window", "4", "--drift-reference-size", "4", cwd=tmp_path) as worker:
        await deployment.send_all(messages)
        await deployment.collect({m["image_id"] for m in messages}, ANSWER_TIMEOUT_S)
        await wait_until(lambda: emptied(deployment), 30, "every request to be deleted")
        metrics = _scrape(port)
        assert worker.stop() == 0, worker.log()
    model = (("model", "simulated"),)
    assert metrics[("batchserve_worker_answered_messages_total", ())] == len(messages)
    assert metrics[("batchserve_worker_deleted_messages_total", ())] == len(messages)
    assert metrics[("batchserve_worker_held_messages", ())] == 0
    # Two polls can receive the same message at once (moto's concurrent receives race, as a standard
    # queue's duplicates come): each such copy is counted once, as the worker logs it.
    assert metrics[("batchserve_worker_redelivered_while_held_messages_total", ())] == \
        worker.log().count("delivered again while held")
    assert metrics[("batchserve_batch_size_sum", (*model, ("version", "1")))] == len(messages)
    # The first four answers are the reference, the last four fill the window.
    assert metrics[("batchserve_drift_reference_answers", model)] == 4
    assert metrics[("batchserve_drift_window_answers", model)] == 4
    assert 0 < metrics[("batchserve_mean_confidence", model)] <= 1
    assert ("batchserve_drift_psi", model) in metrics


async def test_a_taken_metrics_port_stops_the_worker_before_it_receives(deployment: Deployment, tmp_path: Path) -> None:
    import socket

    await deployment.send_all([deployment.request("a.jpg")])
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        worker = WorkerProcess(deployment.name, *SIMULATED, "--metrics-port", str(port), "--metrics-host",
                               "127.0.0.1", cwd=tmp_path).start(wait_ready=False)
        assert worker.wait(60) == 1, worker.log()
    assert f"cannot serve metrics on port {port}" in worker.log()
    assert await deployment.depth() == (1, 0)  # nothing was received


async def test_with_require_gpu_a_worker_on_cpu_stops_before_it_receives(
        deployment: Deployment, built_models: Path, tmp_path: Path) -> None:
    await deployment.send_all([deployment.request("a.jpg")])
    worker = WorkerProcess(deployment.name, "--model-repo", str(built_models), "--models", "tiny", "--require-gpu",
                           cwd=tmp_path).start(wait_ready=False)
    assert worker.wait(90) == 1, worker.log()
    assert "--require-gpu: tiny v1 would run on CPU only" in worker.log()
    assert await deployment.depth() == (1, 0)  # nothing was received


async def test_results_say_when_the_cache_or_a_fallback_answered(
        deployment: Deployment, tmp_path: Path, chelsea: bytes) -> None:
    from tests.serving.model_helpers import add_model

    repo = tmp_path / "repo"
    add_model(repo, "alpha", fallback="beta", broken=True)  # every batch of alpha fails
    add_model(repo, "beta", seed=1)
    await deployment.put_image("a.jpg", chelsea)
    to_alpha = deployment.request("a.jpg", model="alpha", top_k=2)
    first, again = (deployment.request("a.jpg", model="beta", top_k=2) for _ in range(2))
    with WorkerProcess(deployment.name, "--model-repo", str(repo), "--models", "alpha,beta", "--cache", "memory",
                       cwd=tmp_path) as worker:
        await deployment.send_all([to_alpha, first])
        answers = await deployment.collect({to_alpha["image_id"], first["image_id"]}, ANSWER_TIMEOUT_S)
        await deployment.send_all([again])  # the same bytes for the same model: from the cache
        answers |= await deployment.collect({again["image_id"]}, ANSWER_TIMEOUT_S)
        assert worker.stop() == 0, worker.log()
    by_fallback, fresh, cached = (answers[m["image_id"]] for m in (to_alpha, first, again))
    assert (by_fallback["model"], by_fallback["fallback_for"]) == ("beta", "alpha"), by_fallback
    assert "cache" not in fresh and "fallback_for" not in fresh
    assert cached["cache"] == "hit" and "fallback_for" not in cached
    assert cached["predictions"] == fresh["predictions"]
    stored = await deployment.result_object(f"sync/{to_alpha['image_id']}.json")
    assert stored["fallback_for"] == "alpha"


async def test_an_image_inside_its_message_is_classified_without_reading_s3(
        deployment: Deployment, built_models: Path, tmp_path: Path, chelsea: bytes) -> None:
    import base64

    def inline(data: bytes) -> str:
        return base64.b64encode(data).decode()

    await deployment.put_image("stored.jpg", chelsea)
    from_s3 = deployment.request("stored.jpg", top_k=3)
    # No object exists at these keys: an answer proves the worker read the message, not S3.
    carried = deployment.request("absent.jpg", top_k=3, image_data=inline(chelsea), image_content_type="image/jpeg")
    cases = {
        "payload_too_large": deployment.request("absent-big.jpg", image_data=inline(bytes(MAX_IMAGE_BYTES + 1))),
        "invalid_image": deployment.request("absent-garbage.jpg", image_data=inline(b"not an image")),
        "invalid_request": deployment.request("absent-b64.jpg", image_data="%%% not base64 %%%"),
    }
    with WorkerProcess(deployment.name, "--model-repo", str(built_models), "--models", "efficientnet_lite0",
                       "--max-image-bytes", str(MAX_IMAGE_BYTES), cwd=tmp_path) as worker:
        await deployment.send_all([from_s3, carried, *cases.values()])
        answers = await deployment.collect({m["image_id"] for m in [from_s3, carried, *cases.values()]},
                                           ANSWER_TIMEOUT_S)
        await wait_until(lambda: emptied(deployment), 30, "the request queue to empty")
        assert worker.stop() == 0, worker.log()
    assert "error" not in answers[carried["image_id"]], answers[carried["image_id"]]
    assert answers[carried["image_id"]]["predictions"] == answers[from_s3["image_id"]]["predictions"]
    assert answers[carried["image_id"]]["image_file_name"] == "absent.jpg"
    for code, message in cases.items():
        assert answers[message["image_id"]]["error"]["code"] == code, answers[message["image_id"]]
    assert "image_data" in answers[cases["invalid_request"]["image_id"]]["error"]["message"]
    assert f"{MAX_IMAGE_BYTES + 1} bytes, more than the {MAX_IMAGE_BYTES}" in \
        answers[cases["payload_too_large"]["image_id"]]["error"]["message"]
