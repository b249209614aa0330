"""Queue mode end to end, as an operator runs it: `batchserve queue up`, two `batchserve worker`
processes sharing one PostgreSQL event store, a web tier (`batchserve serve --backend queue`), and
the acceptance workload (50 labelled photos at once) run unchanged against the web tier. Then the
same workload again while one worker is SIGKILLed with messages in hand: the other one answers
them once their visibility runs out, and nothing is lost or doubled. Last, the photos as one job
(`workload --jobs`: POST /v1/jobs, followed to its end)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from batchserve.jobs import resources
from batchserve.jobs.aws import connect
from batchserve.jobs.config import QueueConfig
from batchserve.jobs.messages import event_id
from batchserve.loadtest.samples import SAMPLE_IMAGES
from batchserve.loadtest.server_process import ServerProcess
from batchserve.loadtest.workload import load_manifest, report, run, run_job
from tests.events.conftest import pg_url  # noqa: F401 - a fixture: a Postgres schema of this test's own
from tests.jobs.queue_helpers import WORKER_READY_TIMEOUT_S, Deployment, WorkerProcess, unique_name, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

IMAGES = 50  # the workload's default: every photo of the manifest, cycled, all sent at once
# A killed worker's messages come back after this; the worker extends what it holds every third of it.
VISIBILITY_TIMEOUT_S = 3
WORKLOAD_TIMEOUT_S = 120
SETTLE_TIMEOUT_S = 30
# CPU seconds a worker spends within a moment only once it has received images to read and decode
# (an idle one waiting on its long polls spends about 0.02 s a second).
BUSY_CPU_S = 0.05
# So that the worker to be killed surely has messages in hand when it is: the other one holds at
# most a few at once (the rest wait for the first), and the first holds what it receives for a
# while, its batch filling (the 50 images fit in one batch) for long enough that a loaded machine's
# slow start still kills it mid-batch.
SURVIVOR_ARGS = ("--max-held", "10")
VICTIM_BATCH_DELAY_S = 6
# Its long polls last a second: moto's server would otherwise go on answering those of a killed
# worker for up to 20 s, taking its messages out of sight once more when they come back.
VICTIM_ARGS = ("--max-queue-delay-ms", str(VICTIM_BATCH_DELAY_S * 1000), "--max-batch-size", "64",
               "--wait-time-s", "1")
REDELIVERED = re.compile(r"delivered for the [2-9]\. time")


@dataclass
class QueueMode:
    deployment: Deployment
    exported: dict[str, str]  # what `queue up` printed
    workers: list[WorkerProcess]
    web: ServerProcess
    database_url: str


def queue_up(name: str) -> dict[str, str]:
    """`batchserve queue up --name NAME`; the KEY=VALUE settings it prints for the other tiers."""
    proc = subprocess.run([sys.executable, "-m", "batchserve", "queue", "up", "--name", name,
                           "--visibility-timeout-s", str(VISIBILITY_TIMEOUT_S)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exported = dict(line.split("=", 1) for line in proc.stdout.splitlines() if line.strip())
    assert exported["BATCHSERVE_QUEUE_NAME"] == name, proc.stdout
    assert exported["BATCHSERVE_INPUT_BUCKET"] == f"{name}-input", proc.stdout
    assert exported["BATCHSERVE_OUTPUT_BUCKET"] == f"{name}-output", proc.stdout
    return exported


@pytest.fixture
async def queue_mode(moto_endpoint: str, pg_url: str, built_models: Path,  # noqa: F811 - the fixture
                     tmp_path: Path) -> AsyncIterator[QueueMode]:
    name = unique_name("acc")
    exported = queue_up(name)
    config = QueueConfig(queue_name=name, aws_endpoint_url=moto_endpoint)
    async with connect(config) as aws:
        urls = [await resources.queue_url(aws, n) for n in (config.names.requests, config.names.responses)]
        assert all(urls), urls
        deployment = Deployment(config, aws, str(urls[0]), str(urls[1]))
        # Workers and the web tier learn where the deployment is from the lines `queue up` printed.
        env = {**os.environ, **exported}
        workers = [WorkerProcess(name, "--model-repo", str(built_models), "--models", "efficientnet_lite0",
                                 "--visibility-timeout-s", str(VISIBILITY_TIMEOUT_S), "--database-url", pg_url,
                                 *extra, cwd=tmp_path / f"worker{i}", events_path=tmp_path / "unused.sqlite3",
                                 env=env)
                   for i, extra in enumerate((VICTIM_ARGS, SURVIVOR_ARGS))]
        web = ServerProcess("--backend", "queue", "--queue-name", name, "--models", "efficientnet_lite0",
                            "--model-repo", str(built_models), "--queue-timeout-ms", "60000",
                            "--database-url", pg_url, "--journal-dir", str(tmp_path / "web-journal"),
                            env=exported, cwd=tmp_path / "web")
        try:
            for worker in workers:  # the three start side by side; each is waited for below
                worker.start(wait_ready=False)
            web.start()
            for worker in workers:
                worker.wait_for_log("worker ready", WORKER_READY_TIMEOUT_S)
            yield QueueMode(deployment, exported, workers, web, pg_url)
        finally:
            web.stop()
            for worker in workers:
                worker.stop()
            await resources.down(aws, config.names)


async def workload(url: str, *, jobs: bool = False, model: str | None = None) -> str:
    """The acceptance workload (loadtest/workload.py, as `python -m batchserve.loadtest.workload`
    runs it, in this process): its report."""
    send = run_job if jobs else run
    outcomes = await send(url, load_manifest(SAMPLE_IMAGES), IMAGES, model, WORKLOAD_TIMEOUT_S)
    return report(outcomes, 0.0)


def answered_all(output: str) -> str:
    assert f"completed: {IMAGES}\n" in output and f"correct: {IMAGES}\n" in output, output
    return output


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def event_rows(database_url: str) -> dict[str, str]:
    """event_id -> request_id of every fact row in the test's schema."""
    con = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await con.fetch("SELECT event_id::text AS event_id, request_id FROM api_event_fact")
    finally:
        await con.close()
    return {r["event_id"]: r["request_id"] for r in rows}


async def settled(mode: QueueMode, images: int) -> dict[str, str]:
    """The event rows, once every request is deleted (so its event is stored) and `images` rows are in."""
    async def done() -> dict[str, str] | None:
        if await mode.deployment.depth() != (0, 0):
            return None
        rows = await event_rows(mode.database_url)
        return rows if len(rows) >= images else None

    rows: dict[str, str] = await wait_until(done, SETTLE_TIMEOUT_S, f"an empty request queue and {images} events")
    return rows


async def messages_in(deployment: Deployment) -> int:
    """Messages in the request queue, waiting or in flight (one call: this is polled closely)."""
    answer = await deployment.aws.sqs.get_queue_attributes(QueueUrl=deployment.requests_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in answer["Attributes"].values())


def image_ids(keys: list[str]) -> set[str]:
    assert all(k.startswith("sync/") and k.endswith(".json") for k in keys), keys
    return {k.removeprefix("sync/").removesuffix(".json") for k in keys}


async def test_the_workload_through_queue_mode_is_answered_once_even_when_a_worker_is_killed_and_as_a_job(
        queue_mode: QueueMode) -> None:
    mode, deployment = queue_mode, queue_mode.deployment

    # Run 1: both workers up.
    answered_all(await workload(mode.web.url))
    rows = await settled(mode, IMAGES)
    first_keys = await deployment.result_keys("sync/")
    first_ids = image_ids(first_keys)
    assert len(first_keys) == len(first_ids) == IMAGES
    assert await deployment.result_keys() == sorted(first_keys)  # results of synchronous requests only
    # One row per image, each with the id derived from the image's: the workers wrote them all and
    # the web tier none (its rows would carry ids of their own).
    assert set(rows) == {event_id(i) for i in first_ids}
    assert len(set(rows.values())) == IMAGES  # one image per request: 50 requests

    # Run 2: one worker is killed while it holds some of the workload's messages, unanswered.
    victim, survivor = mode.workers
    second = asyncio.create_task(workload(mode.web.url))
    await wait_until(lambda: messages_in(deployment), 60, "the workload's first messages", interval=0.01)
    arrived, cpu_before = time.monotonic(), cpu_seconds(victim.process.pid)

    async def victim_busy() -> bool:
        return cpu_seconds(victim.process.pid) - cpu_before >= BUSY_CPU_S and await messages_in(deployment) > 0

    await wait_until(victim_busy, 60, "the first worker to read and decode images", interval=0.02)
    victim.signal(signal.SIGKILL)
    # Its batch was still filling: nothing it held had been classified, let alone answered.
    assert time.monotonic() - arrived < VICTIM_BATCH_DELAY_S - 1, "the kill came too late to catch a batch filling"
    assert victim.wait(10) == -signal.SIGKILL
    output = answered_all(await second)

    rows = await settled(mode, 2 * IMAGES)
    # What the killed worker held came back, and the survivor answered it.
    assert REDELIVERED.search(survivor.log()), (output, survivor.log())
    keys = await deployment.result_keys("sync/")
    second_ids = image_ids(keys) - first_ids
    assert len(keys) == len(set(keys)) == 2 * IMAGES and len(second_ids) == IMAGES
    results = [await deployment.result_object(f"sync/{i}.json") for i in sorted(second_ids)]
    assert all(r["image_id"] == i and "error" not in r for r, i in zip(results, sorted(second_ids), strict=True))
    assert len({r["request_id"] for r in results}) == IMAGES  # each request answered by exactly one object
    assert len(rows) == 2 * IMAGES and set(rows) == {event_id(i) for i in first_ids | second_ids}
    assert {rows[event_id(r["image_id"])] for r in results} == {r["request_id"] for r in results}

    # Run 3: the same photos as one job (POST /v1/jobs, followed to its end), on the surviving worker.
    answered_all(await workload(mode.web.url, jobs=True))
    rows = await settled(mode, 3 * IMAGES)
    job_keys = [k for k in await deployment.result_keys() if not k.startswith(("sync/", "_index/"))]
    job_ids = {k.split("/", 1)[0] for k in job_keys}
    assert len(job_ids) == 1, job_keys
    job_id = job_ids.pop()
    job_images = {k.split("/", 1)[1].removesuffix(".json") for k in job_keys} - {"job"}
    assert f"{job_id}/job.json" in job_keys and len(job_keys) == IMAGES + 1
    assert len(rows) == 3 * IMAGES
    assert set(rows) == {event_id(i) for i in first_ids | second_ids | job_images}
    # A job the server refuses fails every photo, and says why.
    output = await workload(mode.web.url, jobs=True, model="no_such_model")
    assert f"failed: {IMAGES}\n" in output and "model_not_found" in output, output
    assert survivor.stop() == 0, survivor.log()
