"""Playing the web tier in tests: images into the input bucket, request messages into the queue,
responses and result objects read back; and `batchserve worker` child processes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from batchserve.jobs import resources
from batchserve.jobs.aws import AwsClients, connect
from batchserve.jobs.config import QueueConfig, ResourceNames

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# Settings of a developer's own AWS set-up that would take calls elsewhere than moto.
_AWS_ELSEWHERE = ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3")


def s3_client(endpoint: str) -> Any:
    """A plain boto3 S3 client of moto's server, for tests that set buckets up or look into them."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=AWS_ENV["AWS_DEFAULT_REGION"])


def new_bucket(s3: Any, prefix: str) -> str:
    """A fresh bucket with a unique name (moto's server keeps its buckets for the whole session)."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def point_aws_at(endpoint: str, monkeypatch: pytest.MonkeyPatch, *also_unset: str) -> None:
    """Credentials moto accepts and its endpoint, for this process and the processes it starts."""
    for name in (*_AWS_ELSEWHERE, *also_unset):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**AWS_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
WORKER_READY_TIMEOUT_S = 90.0


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.1) -> Any:
    """The first truthy value of `check()`, polled until `timeout`; AssertionError naming `what` if none came."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)


@dataclass
class Deployment:
    config: QueueConfig
    aws: AwsClients
    requests_url: str
    responses_url: str
    responses: list[dict[str, Any]] = field(default_factory=list)

    @property
    def names(self) -> ResourceNames:
        return self.config.names

    @property
    def name(self) -> str:
        return self.names.name

    async def put_image(self, key: str, data: bytes, content_type: str = "image/jpeg") -> None:
        await self.aws.s3.put_object(Bucket=self.names.input_bucket, Key=key, Body=data, ContentType=content_type)

    def request(self, image_key: str, **fields: Any) -> dict[str, Any]:
        """A request message as the web tier makes it (fields override)."""
        return {"image_id": uuid.uuid4().hex, "request_id": uuid.uuid4().hex, "image_bucket": self.names.input_bucket,
                "image_key": image_key, "image_file_name": image_key.rsplit("/", 1)[-1],
                "received_at": datetime.now(UTC).isoformat(), "user": "k_test", "client_ip": "203.0.113.7",
                "user_agent": "queue-tests/1", **fields}

    async def send(self, message: dict[str, Any] | str) -> None:
        body = message if isinstance(message, str) else json.dumps(message)
        await self.aws.sqs.send_message(QueueUrl=self.requests_url, MessageBody=body)

    async def send_all(self, messages: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            await self.aws.sqs.send_message_batch(
                QueueUrl=self.requests_url,
                Entries=[{"Id": str(i), "MessageBody": json.dumps(m)} for i, m in enumerate(chunk)])

    async def receive_responses(self, url: str | None = None) -> list[dict[str, Any]]:
        """Whatever responses are waiting now (deleted once read); also kept in `responses`."""
        answer = await self.aws.sqs.receive_message(QueueUrl=url or self.responses_url, MaxNumberOfMessages=10,
                                                    WaitTimeSeconds=0)
        got = []
        for message in answer.get("Messages", []):
            got.append(json.loads(message["Body"]))
            await self.aws.sqs.delete_message(QueueUrl=url or self.responses_url,
                                              ReceiptHandle=message["ReceiptHandle"])
        self.responses += got
        return got

    async def collect(self, image_ids: set[str], timeout: float, url: str | None = None) -> dict[str, dict[str, Any]]:
        """Responses until every image in `image_ids` has one (the last response per image)."""
        async def all_answered() -> bool:
            await self.receive_responses(url)
            return image_ids <= {r["image_id"] for r in self.responses}

        await wait_until(all_answered, timeout, f"responses for {len(image_ids)} images")
        return {r["image_id"]: r for r in self.responses if r["image_id"] in image_ids}

    async def depth(self, queue: str | None = None) -> tuple[int, int]:
        """(waiting, in flight) of a queue of the deployment (default: the request queue)."""
        found = {d.name: d for d in await resources.depths(self.aws, self.names)}
        d = found[queue or self.names.requests]
        return d.visible, d.in_flight

    async def result_keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        async for page in self.aws.s3.get_paginator("list_objects_v2").paginate(Bucket=self.names.output_bucket,
                                                                                 Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    async def result_object(self, key: str) -> dict[str, Any]:
        answer = await self.aws.s3.get_object(Bucket=self.names.output_bucket, Key=key)
        async with answer["Body"] as body:
            data: dict[str, Any] = json.loads(await body.read())
            return data


@contextlib.asynccontextmanager
async def new_deployment(config: QueueConfig) -> AsyncIterator[Deployment]:
    config = dataclasses.replace(config, queue_name=config.queue_name or unique_name())
    async with connect(config) as aws:
        await resources.up(aws, config)
        urls = [await resources.queue_url(aws, n) for n in (config.names.requests, config.names.responses)]
        assert all(urls)
        try:
            yield Deployment(config, aws, str(urls[0]), str(urls[1]))
        finally:
            await resources.down(aws, config.names)


class WorkerProcess:
    """One `batchserve worker` child in `cwd`, its output in worker-<n>.log; `start` returns once it
    logs that it is ready."""

    _count = 0

    def __init__(self, name: str, *args: str, cwd: Path, events_path: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        WorkerProcess._count += 1
        self.cwd = cwd
        self.log_path = cwd / f"worker-{WorkerProcess._count}.log"
        events = ["--events-path", str(events_path), "--journal-dir", str(cwd / f"journal-{WorkerProcess._count}"),
                  "--events-flush-interval-ms", "50"] if events_path else ["--no-events"]
        self.command = [sys.executable, "-m", "batchserve", "worker", "--queue-name", name, *events, *args]
        self.env = {**os.environ, **(env or {})}
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        assert self._process is not None, "not started"
        return self._process

    def start(self, wait_ready: bool = True) -> WorkerProcess:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait_ready:
            self.wait_for_log("worker ready", WORKER_READY_TIMEOUT_S)
        return self

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited ({self.process.returncode}) before logging {text!r}:\n"
                                     f"{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not log {text!r} within {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        return self._process.returncode

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def event_rows(path: Path, request_ids: set[str] | None = None) -> list[dict[str, Any]]:
    """The fact rows of the SQLite event store at `path`, joined with the user they name."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute(
            "SELECT f.event_id, f.request_id, f.event_ts, f.route, f.model_name, f.status, f.error_code, "
            "f.batch_size, u.user_name, u.client_ip, u.user_agent, c.class_id "
            "FROM api_event_fact f JOIN user_dim u USING (user_key) LEFT JOIN class_dim c USING (class_key)")]
    return [r for r in rows if request_ids is None or r["request_id"] in request_ids]
