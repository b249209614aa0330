"""Dead letters against moto's server: the drainer answers them `dead_lettered` once, leaves them in the
dead-letter queue, and `queue redrive` + a real worker turn them into answers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from batchserve.events.config import EventsConfig
from batchserve.events.writer import EventWriter
from batchserve.jobs import resources
from batchserve.jobs.dead_letters import DeadLetterDrainer, dead_letter_event_id, drain_dead_letters
from batchserve.jobs.messages import event_id
from batchserve.jobs.recording import EventLedger
from batchserve.jobs.replies import Responder
from tests.jobs.queue_helpers import Deployment, WorkerProcess, event_rows, wait_until

ANSWER_TIMEOUT_S = 30


async def stored(deployment: Deployment, key: str) -> dict[str, Any] | None:
    keys = await deployment.result_keys(key)
    return await deployment.result_object(key) if key in keys else None


async def test_dead_letters_are_answered_once_kept_and_redriven_into_answers(
        deployment: Deployment, built_models: Path, chelsea: bytes, tmp_path: Path) -> None:
    aws, names = deployment.aws, deployment.names
    dlq_url = str(await resources.queue_url(aws, names.dead_letters))
    await deployment.put_image("uploads/cat.jpg", chelsea)
    job_message = deployment.request("uploads/cat.jpg", model="tiny", top_k=2, job_id="job-dl")
    sync_message = deployment.request("uploads/cat.jpg", model="tiny")
    # As SQS moves a message that failed three deliveries; a malformed one cannot be answered at all.
    for body in (json.dumps(job_message), json.dumps(sync_message), "{not json"):
        await aws.sqs.send_message(QueueUrl=dlq_url, MessageBody=body)
    job_key, sync_key = f"job-dl/{job_message['image_id']}.json", f"sync/{sync_message['image_id']}.json"

    events = tmp_path / "drainer-events.sqlite3"
    writer = EventWriter(EventsConfig(events_path=events, journal_dir=tmp_path / "journal", flush_interval_ms=50))
    await writer.start()
    ledger = EventLedger(writer)
    responder = Responder(aws, names, deployment.responses_url, keep_trying=lambda: True)
    stop = asyncio.Event()
    drainer = asyncio.create_task(drain_dead_letters(aws, names, responder, ledger, stop, interval_s=0.2))
    try:
        answered = await wait_until(lambda: stored(deployment, job_key), ANSWER_TIMEOUT_S, "the dead-letter result")
        await wait_until(lambda: stored(deployment, sync_key), ANSWER_TIMEOUT_S, "the synchronous dead letter")
        responses = await deployment.collect({job_message["image_id"], sync_message["image_id"]}, ANSWER_TIMEOUT_S)
    finally:
        stop.set()
        await asyncio.wait_for(drainer, 10)
    assert answered["error"]["code"] == "dead_lettered" and "redrive" in answered["error"]["message"]
    assert (answered["image_id"], answered["request_id"], answered["job_id"]) == (
        job_message["image_id"], job_message["request_id"], "job-dl")
    assert "predictions" not in answered and answered["prediction_value"] is None
    assert responses[job_message["image_id"]] == answered
    assert responses[sync_message["image_id"]]["error"]["code"] == "dead_lettered"

    # Answered once: passes after it, and a restarted worker's drainer, find the results and write nothing.
    rerun = DeadLetterDrainer(aws, names, responder, ledger, keep_trying=lambda: True)
    assert await rerun.drain_once(asyncio.Event()) == 0
    assert len(ledger_rows := await _flushed(writer, events)) == 2
    assert {r["event_id"]: (r["route"], r["status"], r["error_code"], r["user_name"]) for r in ledger_rows} == {
        dead_letter_event_id(job_message["image_id"]): ("jobs", 502, "dead_lettered", "k_test"),
        dead_letter_event_id(sync_message["image_id"]): ("v1", 502, "dead_lettered", "k_test")}
    # ...and still in the dead-letter queue, visible to `queue redrive`.
    assert await deployment.depth(names.dead_letters) == (3, 0)

    assert await resources.redrive(aws, names) == 3
    worker_events = tmp_path / "worker-events.sqlite3"
    with WorkerProcess(deployment.name, "--model-repo", str(built_models), "--models", "tiny", cwd=tmp_path,
                       events_path=worker_events):
        async def succeeded() -> dict[str, Any] | None:
            result = await stored(deployment, job_key)
            return result if result is not None and "predictions" in result else None

        redriven = await wait_until(succeeded, ANSWER_TIMEOUT_S, "the redriven dead letter's answer")
        rows = await wait_until(lambda: _events(worker_events, {event_id(job_message["image_id"])}), 10,
                                "the redriven image's event")
    assert redriven["model"] == "tiny" and len(redriven["predictions"]) == 2
    assert [(r["route"], r["status"], r["error_code"]) for r in rows] == [("jobs", 200, None)]


async def _flushed(writer: EventWriter, path: Path) -> list[dict[str, Any]]:
    await writer.close()
    return event_rows(path)


async def _events(path: Path, ids: set[str]) -> list[dict[str, Any]] | None:
    rows = [r for r in event_rows(path) if r["event_id"] in ids]
    return rows if len(rows) == len(ids) else None
