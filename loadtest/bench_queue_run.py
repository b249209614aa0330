"""The processes and measurements of `batchserve bench --queue` (see bench_queue.py): moto's server,
the deployment, a worker, a direct server and a web tier; then the rounds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from batchserve.jobs import resources
from batchserve.jobs.aws import AwsClients, connect
from batchserve.jobs.config import QueueConfig, QueueLocation, ResourceNames
from batchserve.jobs.messages import Prediction, RequestMessage, Result, Timing, decode_result, encode
from batchserve.jobs.options import exported_settings
from batchserve.jobs.request_builder import carried
from batchserve.loadtest.bench import content_type
from batchserve.loadtest.bench_queue import DIRECT_CONNECTIONS, WORKLOAD_IMAGES, QueueBenchSettings, summarise
from batchserve.loadtest.bench_report import machine
from batchserve.loadtest.http_load import LoadClientError, run_load
from batchserve.loadtest.moto_server import MotoServer, pin_process
from batchserve.loadtest.server_process import ServerProcess, ServerStartError
from batchserve.loadtest.workload import LabelledImage, WorkloadError, load_manifest
from batchserve.loadtest.workload import run as run_workload

if TYPE_CHECKING:  # ONNX Runtime loads only when a bench runs
    from batchserve.loadtest.inprocess import InProcess

WORKLOAD_TIMEOUT_S = 120.0
START_TIMEOUT_S = 120.0
LIMIT_BATCH_SIZES = (8, 16, 32)
BACKLOG_SENDS_AT_ONCE = 8


# ---- processes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pinning:
    """Which CPUs the bench's parts run on. Pinned: moto and the web tier on one CPU (the services'),
    the model's processes (the worker, the direct server and the in-process reference) on another,
    so the worker's ratio compares one CPU running the worker with the same CPU running the model in
    process, and moto's CPU comes from neither. Not pinned (`None`): every part shares every CPU.
    The bench's own client is never pinned."""

    services: tuple[int, ...] | None = None
    model: tuple[int, ...] | None = None

    @classmethod
    def choose(cls, pin: bool) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls()
        return cls((cpus[0],), (cpus[-1],))

    def describe(self) -> dict[str, list[int]] | None:
        if self.services is None or self.model is None:
            return None
        services, model = list(self.services), list(self.model)
        return {"moto": services, "web_tier": services, "worker": model, "direct": model, "in_process": model}


@contextlib.contextmanager
def running_on(cpus: tuple[int, ...] | None) -> Iterator[None]:
    """Every thread of this process on `cpus` for the block (None: left as it is)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    pin_process(os.getpid(), cpus)
    try:
        yield
    finally:
        pin_process(os.getpid(), before)


def start_pinned(server: ServerProcess, cpus: tuple[int, ...] | None) -> None:
    """Wait for a launched `server`, then put it on `cpus`: it starts on every cpu, and the threads it
    starts later inherit the cpus of the (pinned) thread that starts them."""
    try:
        server.wait_ready(server.ready_timeout)
    except BaseException:
        server.stop(timeout=5)
        raise
    if cpus is not None:
        pin_process(server.process.pid, cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def queue_up(name: str, moto: MotoServer) -> dict[str, str]:
    """What `batchserve queue up --name NAME` does, in this process: the deployment on `moto`, and the
    settings it prints for the worker and the web tier."""
    config = QueueConfig(queue_name=name)

    async def up() -> None:
        async with connect(config) as aws:
            await resources.up(aws, config)

    with environment(moto.environment()):
        asyncio.run(up())
    return exported_settings(config, moto.environment())


class WorkerChild:
    """One `batchserve worker ARGS` child, its output in `log_path`."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path,
                 cpus: tuple[int, ...] | None = None) -> None:
        self.command = [sys.executable, "-m", "batchserve", "worker", *args]
        self.env = env
        self.log_path = log_path
        self.cpus = cpus
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the worker has not been started")
        return self._process.pid

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(self.command, env=self.env, cwd=self.log_path.parent, stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while "worker ready" not in self._log():
            if self._process is None or self._process.poll() is not None:
                raise ServerStartError(f"the worker exited before it was ready:\n{self._log()[-2000:]}")
            if time.monotonic() > deadline:
                raise ServerStartError(f"the worker was not ready within {timeout:.0f} s:\n{self._log()[-2000:]}")
            time.sleep(0.1)
        if self.cpus is not None:
            pin_process(self.pid, self.cpus)

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP for the block, SIGCONT after it, whatever happens inside."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` for the block (the S3/SQS clients of this process read it)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class Stack:
    """Everything one bench run starts, and what it measures with."""

    settings: QueueBenchSettings
    moto: MotoServer
    names: ResourceNames
    worker: WorkerChild
    direct: ServerProcess
    web: ServerProcess
    inproc: InProcess
    pinning: Pinning
    photos: list[LabelledImage]
    image: bytes
    content_type: str
    limit_batch: int = 0
    samples: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, key: str, value: Any) -> None:
        self.samples.setdefault(key, []).append(value)

    def inline(self) -> dict[str, Any]:
        """The image fields of a request message, as the web tier fills them for this image."""
        data = carried(self.image, self.settings.inline_max_bytes)
        return {} if data is None else {"image_data": data, "image_content_type": self.content_type}


# ---- (a) the workload -------------------------------------------------------------------------
async def _workload(url: str, stack: Stack) -> dict[str, Any]:
    started = time.perf_counter()
    outcomes = await run_workload(url, stack.photos, WORKLOAD_IMAGES, stack.settings.model, WORKLOAD_TIMEOUT_S)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "completed": sum(o.ok for o in outcomes),
            "correct": sum(o.ok and o.correct for o in outcomes)}


async def measure_workload(stack: Stack, round_number: int, say: Callable[[str], None]) -> None:
    sides = [("web", stack.web.url), ("direct", stack.direct.url)]
    if round_number % 2:
        sides.reverse()
    result: dict[str, dict[str, Any]] = {}
    for side, url in sides:
        result[side] = await _workload(url, stack)
    stack.add("workload", result)
    web, direct = result["web"], result["direct"]
    say(f"  (a) workload of {WORKLOAD_IMAGES}: web tier {web['seconds']:.2f} s ({web['correct']} correct), "
        f"direct {direct['seconds']:.2f} s ({direct['correct']} correct): {web['seconds'] / direct['seconds']:.2f}x")


# ---- (b) one worker draining a backlog ---------------------------------------------------------
async def _send_all(aws: AwsClients, url: str, bodies: list[str]) -> None:
    chunks = [bodies[i:i + 10] for i in range(0, len(bodies), 10)]
    gate = asyncio.Semaphore(BACKLOG_SENDS_AT_ONCE)

    async def send(chunk: list[str]) -> None:
        async with gate:
            answer = await aws.sqs.send_message_batch(
                QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(chunk)])
            if answer.get("Failed"):
                raise LoadClientError(f"SQS refused backlog messages: {answer['Failed'][:2]}")

    await asyncio.gather(*(send(c) for c in chunks))


async def _read_answers(aws: AwsClients, url: str, expected: int, timeout_s: float) -> tuple[float, int]:
    """(the latest SentTimestamp, in ms since the epoch; how many were errors) of the `expected`
    worker answers to `url`, read (and deleted) as they arrive, as a web tier reads its own: a reply
    queue left to fill would make each of moto's sends to it slower (moto counts a queue's messages
    on every send)."""
    seen: set[str] = set()
    latest, errors = 0.0, 0
    deadline = time.monotonic() + timeout_s
    while len(seen) < expected:
        if time.monotonic() > deadline:
            raise LoadClientError(f"the worker answered {len(seen)} of {expected} queued images within "
                                  f"{timeout_s:.0f} s")
        answer = await aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                               VisibilityTimeout=300, MessageSystemAttributeNames=["SentTimestamp"])
        messages = answer.get("Messages", [])
        if not messages:
            continue
        for m in messages:
            if m["MessageId"] not in seen:
                seen.add(m["MessageId"])
                latest = max(latest, float(m["Attributes"]["SentTimestamp"]))
                errors += decode_result(m["Body"]).failed
        await aws.sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
    return latest, errors


async def measure_worker(stack: Stack, aws: AwsClients, round_number: int, say: Callable[[str], None]) -> None:
    names, n = stack.names, stack.settings.backlog
    key = f"bench/backlog-{round_number}"
    await aws.s3.put_object(Bucket=names.input_bucket, Key=key, Body=stack.image, ContentType=stack.content_type)
    reply = await aws.sqs.create_queue(QueueName=f"{names.reply_prefix}bench{uuid.uuid4().hex[:12]}")
    reply_url = str(reply["QueueUrl"])
    requests_url = str((await aws.sqs.get_queue_url(QueueName=names.requests))["QueueUrl"])
    bodies = [encode(RequestMessage(image_id=uuid.uuid4().hex, request_id=f"bench-{round_number}-{i}",
                                    image_bucket=names.input_bucket, image_key=key,
                                    image_file_name=stack.settings.image.name, model=stack.settings.model,
                                    reply_to=reply_url, **stack.inline())).decode() for i in range(n)]
    try:
        limit_cpu = time.process_time()
        with running_on(stack.pinning.model):
            first = stack.inproc.pipeline_rate(stack.limit_batch, stack.settings.duration)
        limit_cpu = time.process_time() - limit_cpu
        before = first.per_second
        with stack.worker.paused():
            await _send_all(aws, requests_url, bodies)
            moto_cpu, worker_cpu = cpu_seconds(stack.moto.pid), cpu_seconds(stack.worker.pid)
            started = time.time()
        last_ms, errors = await _read_answers(aws, reply_url, n, max(120.0, n / 2))
        moto_cpu, worker_cpu = cpu_seconds(stack.moto.pid) - moto_cpu, cpu_seconds(stack.worker.pid) - worker_cpu
        seconds = last_ms / 1000.0 - started
        # What HTTP gets out of the same CPU: the direct server runs where the worker does, its
        # clients (wrk when installed) where moto does.
        with running_on(stack.pinning.services):
            direct = run_load(f"{stack.direct.url}/v1/classify?model={stack.settings.model}", stack.settings.image,
                              stack.content_type, DIRECT_CONNECTIONS, stack.settings.duration, "auto").ok_per_second
        with running_on(stack.pinning.model):
            after = stack.inproc.pipeline_rate(stack.limit_batch, stack.settings.duration).per_second
    finally:
        await aws.sqs.delete_queue(QueueUrl=reply_url)
    rate = n / seconds
    limit = (before + after) / 2
    stack.add("worker", {"images": n, "seconds": seconds, "images_per_s": rate, "limit_before": before,
                         "limit_after": after, "ratio": rate / limit, "moto_cpu_s": moto_cpu,
                         "worker_cpu_s": worker_cpu, "limit_cpu_s_per_image": limit_cpu / first.images,
                         "errors": errors, "direct_images_per_s": direct})
    say(f"  (b) worker drained {n} in {seconds:.2f} s: {rate:.1f} images/s; limit {before:.1f} / {after:.1f} "
        f"images/s (batch {stack.limit_batch}): ratio {rate / limit:.2f}; direct server {direct:.1f} images/s "
        f"({direct / limit:.2f}); CPU s: moto {moto_cpu:.1f}, worker {worker_cpu:.1f}; {errors} error answers")


# ---- (c) one image at a time --------------------------------------------------------------------
async def _post(client: httpx.AsyncClient, url: str, stack: Stack) -> float:
    started = time.perf_counter()
    answer = await client.post(url + "/v1/classify", content=stack.image,
                               headers={"Content-Type": stack.content_type})
    elapsed = (time.perf_counter() - started) * 1000.0
    if answer.status_code != 200:
        raise LoadClientError(f"{url} answered {answer.status_code}: {answer.text[:200]}")
    return elapsed


# The S3/SQS calls on a queued image's path, in order: the web tier puts the image and sends the
# request, which the worker's waiting long poll returns; the worker reads the image, stores the
# result and sends the answer, which the web tier's waiting long poll returns.
CHAIN_STEPS = ("put_image", "request_via_sqs", "get_image", "put_result", "answer_via_sqs")
POLL_PARK_S = 0.05  # lets a long poll reach moto and wait there before the message it waits for is sent


async def _receive_one(aws: AwsClients, url: str) -> tuple[float, str]:
    """(when it returned, perf_counter; the receipt handle) of one message from a long poll."""
    answer = await aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=5)
    messages = answer.get("Messages", [])
    if not messages:
        raise LoadClientError("a message sent for the S3/SQS chain did not arrive within 5 s")
    return time.perf_counter(), str(messages[0]["ReceiptHandle"])


async def _moto_chain(aws: AwsClients, stack: Stack, queue_urls: tuple[str, str], result_body: str) -> dict[str, float]:
    """The calls of CHAIN_STEPS against moto, from this process through the clients the tiers use,
    with long polls waiting in moto before each send as the tiers' are: milliseconds per step, and
    `total`. The messages are deleted afterwards, untimed, as the tiers delete theirs off the path."""
    bucket, key = stack.names.input_bucket, f"bench/chain-{uuid.uuid4().hex}"
    request_body = encode(RequestMessage(image_id=uuid.uuid4().hex, request_id="bench-chain", image_bucket=bucket,
                                         image_key=key)).decode()
    client_cpu, moto_cpu = time.process_time(), cpu_seconds(stack.moto.pid)
    polls = [asyncio.create_task(_receive_one(aws, url)) for url in queue_urls]
    await asyncio.sleep(POLL_PARK_S)
    steps: dict[str, float] = {}
    receipts: list[str] = []

    async def timed(step: str, call: Callable[[], Awaitable[Any]]) -> None:
        started = time.perf_counter()
        await call()
        steps[step] = (time.perf_counter() - started) * 1000.0

    async def via_sqs(step: str, poll: asyncio.Task[tuple[float, str]], url: str, body: str) -> None:
        """From the send until the waiting poll has the message (it may return before the send does)."""
        started = time.perf_counter()
        await aws.sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "0", "MessageBody": body}])
        arrived, receipt = await poll
        steps[step] = (arrived - started) * 1000.0
        receipts.append(receipt)

    try:
        await timed("put_image", lambda: aws.objects.put(bucket, key, stack.image, stack.content_type))
        await via_sqs("request_via_sqs", polls[0], queue_urls[0], request_body)
        await timed("get_image", lambda: aws.objects.get(bucket, key, len(stack.image)))
        await timed("put_result", lambda: aws.objects.put(bucket, f"{key}.json", result_body.encode(),
                                                          "application/json"))
        await via_sqs("answer_via_sqs", polls[1], queue_urls[1], result_body)
    finally:
        for poll in polls:
            poll.cancel()
    client_cpu, moto_cpu = time.process_time() - client_cpu, cpu_seconds(stack.moto.pid) - moto_cpu
    for url, receipt in zip(queue_urls, receipts, strict=True):
        await aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=receipt)
    # The path's length: each step starts when the previous one's result is there (a send that returns
    # after its message arrived does not hold the receiver up).
    return {**steps, "total": sum(steps.values()), "client_cpu": client_cpu * 1000.0, "moto_cpu": moto_cpu * 1000.0}


def _result_like_a_workers() -> str:
    """A response of the size a worker sends for one image (top 5), for the chain's second half."""
    top5 = [Prediction(class_id=c, label=f"label of class {c}", score=0.1) for c in range(5)]
    return encode(Result(image_id=uuid.uuid4().hex, request_id=uuid.uuid4().hex, image_file_name="chelsea.jpg",
                         prediction_value=top5[0].label, predictions=top5, model="efficientnet_lite0",
                         model_version=1, job_id=None, timing_ms=Timing(1.0, 10.0, 20.0), batch_size=1)).decode()


async def _through_worker(aws: AwsClients, stack: Stack, requests_url: str, reply_url: str) -> tuple[float, float]:
    """An image put and its request sent from here, the worker, its answer received here: (round
    trip ms, the worker's own ms from receipt to answer)."""
    names, image_id = stack.names, uuid.uuid4().hex
    key = f"uploads/{image_id}"
    message = RequestMessage(image_id=image_id, request_id=f"bench-{image_id}", image_bucket=names.input_bucket,
                             image_key=key, image_file_name=stack.settings.image.name, model=stack.settings.model,
                             reply_to=reply_url, **stack.inline())
    started = time.perf_counter()
    await aws.s3.put_object(Bucket=names.input_bucket, Key=key, Body=stack.image, ContentType=stack.content_type)
    await aws.sqs.send_message_batch(QueueUrl=requests_url, Entries=[{"Id": "0", "MessageBody": encode(message)
                                                                      .decode()}])
    while True:
        answer = await aws.sqs.receive_message(QueueUrl=reply_url, MaxNumberOfMessages=1, WaitTimeSeconds=20)
        messages = answer.get("Messages", [])
        if not messages:
            raise LoadClientError("the worker did not answer one image within 20 s")
        result = decode_result(messages[0]["Body"])
        await aws.sqs.delete_message(QueueUrl=reply_url, ReceiptHandle=messages[0]["ReceiptHandle"])
        if result.image_id == image_id:
            break
    elapsed = (time.perf_counter() - started) * 1000.0
    if result.failed or result.timing_ms is None:
        raise LoadClientError(f"the worker answered an error: {encode(result).decode()[:300]}")
    return elapsed, result.timing_ms.total


async def measure_latency(stack: Stack, aws: AwsClients, round_number: int, say: Callable[[str], None]) -> None:
    names = stack.names
    requests_url = str((await aws.sqs.get_queue_url(QueueName=names.requests))["QueueUrl"])
    made = [str((await aws.sqs.create_queue(QueueName=queue))["QueueUrl"]) for queue in (
        f"{names.reply_prefix}bench{uuid.uuid4().hex[:12]}", f"{names.name}-bench-chain-a",
        f"{names.name}-bench-chain-b")]
    reply_url, chain_urls = made[0], (made[1], made[2])
    times: dict[str, list[float]] = {"web": [], "direct": [], "through_worker": [], "worker_own": []}
    chains: list[dict[str, float]] = []
    result_body = _result_like_a_workers()
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), trust_env=False) as client:
            for url in (stack.web.url, stack.direct.url):  # open the connections before timing
                await _post(client, url, stack)
            deadline = time.monotonic() + stack.settings.duration
            turn = round_number
            while time.monotonic() < deadline or not times["web"]:
                turn += 1
                order = ["web", "direct", "chain", "worker"]
                for what in order[turn % 4:] + order[:turn % 4]:  # each goes first in turn
                    if what == "web":
                        times["web"].append(await _post(client, stack.web.url, stack))
                    elif what == "direct":
                        times["direct"].append(await _post(client, stack.direct.url, stack))
                    elif what == "chain":
                        chains.append(await _moto_chain(aws, stack, chain_urls, result_body))
                    else:
                        total, own = await _through_worker(aws, stack, requests_url, reply_url)
                        times["through_worker"].append(total)
                        times["worker_own"].append(own)
    finally:
        for url in made:
            await aws.sqs.delete_queue(QueueUrl=url)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    chain = {k: statistics.median(c[k] for c in chains) for k in (*CHAIN_STEPS, "total")}
    # CPU times come in clock ticks (10 ms): their mean over the chains says more than a median.
    cpu = {k: statistics.mean(c[k] for c in chains) for k in ("client_cpu", "moto_cpu")}
    stack.add("latency", {"p50_ms": {**p50, "chain": chain["total"]}, "chain_steps_p50_ms": chain,
                          "chain_cpu_mean_ms": cpu,
                          "pairs": len(times["web"]), "added_p50_ms": p50["web"] - p50["direct"]})
    say(f"  (c) c=1 p50 ms over {len(times['web'])} pairs: web {p50['web']:.1f}, direct {p50['direct']:.1f}, "
        f"added {p50['web'] - p50['direct']:.1f}; moto's 7 calls {chain['total']:.1f} "
        f"({', '.join(f'{k} {chain[k]:.1f}' for k in CHAIN_STEPS)}; CPU: this process {cpu['client_cpu']:.1f}, "
        f"moto {cpu['moto_cpu']:.1f}); through the worker from here "
        f"{p50['through_worker']:.1f} (the worker's own {p50['worker_own']:.1f})")


# ---- the run ------------------------------------------------------------------------------------
def run_queue_bench(settings: QueueBenchSettings, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    from batchserve.loadtest.inprocess import InProcess

    try:
        photos = load_manifest(settings.workload_images)
    except WorkloadError as exc:
        raise LoadClientError(str(exc)) from None
    pinning = Pinning.choose(settings.pin)
    scratch = Path(tempfile.mkdtemp(prefix="batchserve-bench-queue-"))
    moto = MotoServer(scratch / "moto.log", cpus=pinning.services)
    started: list[Any] = []
    inproc: InProcess | None = None
    try:
        load_before = os.getloadavg()[0]
        say("starting moto, the deployment, a worker, a direct server and a web tier")
        repo = ["--models", settings.model, "--model-repo", str(settings.model_repo.resolve()), "--no-events"]
        direct = ServerProcess(*repo, cwd=scratch / "direct", ready_timeout=START_TIMEOUT_S)
        started.append(direct)
        direct.launch()  # it needs no deployment: it starts while moto does
        moto.start()
        name = f"bench{uuid.uuid4().hex[:10]}"
        image = settings.image.read_bytes()
        # The worker and the web tier find the deployment from what `queue up` prints, as in production.
        env = {**moto.environment(), **queue_up(name, moto)}
        worker = WorkerChild(repo, {**os.environ, **env}, scratch / "worker.log", cpus=pinning.model)
        web = ServerProcess("--backend", "queue", *repo, "--queue-inline-max-bytes", str(settings.inline_max_bytes),
                            env=env, cwd=scratch / "web", ready_timeout=START_TIMEOUT_S)
        started += [worker, web]
        worker.start()
        web.launch()
        inproc = InProcess(settings.model, settings.model_repo, image)
        # Each part starts on every cpu and is pinned once ready (its threads with it).
        for server, cpus in ((direct, pinning.model), (web, pinning.services)):
            start_pinned(server, cpus)
        worker.wait_ready()
        stack = Stack(settings, moto, ResourceNames.of(name), worker, direct, web, inproc, pinning, photos, image,
                      content_type(settings.image))
        say("warming up; choosing the in-process batch size")
        with running_on(pinning.model):
            inproc.warmup(list(LIMIT_BATCH_SIZES))
            rates = {b: inproc.pipeline_rate(b, min(settings.duration, 2.0) / 2).per_second
                     for b in LIMIT_BATCH_SIZES}
        stack.limit_batch = max(rates, key=rates.__getitem__)
        with environment(moto.environment()):
            asyncio.run(_measure(settings, stack, say))
        # The load average before anything started and at the end: other work on the machine shows there.
        load = {"before": load_before, "end": os.getloadavg()[0]}
        return summarise(settings, stack.samples, {"machine": {**machine(), "moto": _moto_version(),
                                                               "load_average_1m": load,
                                                               "pinning": pinning.describe()},
                                                   "image_bytes": len(image), "limit_batch_size": stack.limit_batch})
    finally:
        for process in reversed(started):
            process.stop()
        if inproc is not None:
            inproc.close()
        moto.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _moto_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("moto")
    except PackageNotFoundError:
        return "unknown"


async def _measure(settings: QueueBenchSettings, stack: Stack, say: Callable[[str], None]) -> None:
    # The in-process measurements block this loop while they run: nothing else is under way then.
    from botocore.exceptions import BotoCoreError, ClientError

    location = QueueLocation(queue_name=stack.names.name)
    try:
        async with connect(location, connections=16) as aws:
            # First requests pay for lazy set-up; both sides warm up at once, nothing is measured yet.
            await asyncio.gather(*(_workload(url, stack) for url in (stack.web.url, stack.direct.url)))
            for r in range(settings.repeats):
                say(f"round {r + 1} of {settings.repeats}")
                await measure_workload(stack, r, say)
                await measure_worker(stack, aws, r, say)
                await measure_latency(stack, aws, r, say)
    except (BotoCoreError, ClientError) as exc:
        raise LoadClientError(f"S3/SQS (moto) failed: {exc}") from exc


