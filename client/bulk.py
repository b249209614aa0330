"""`batchserve classify` in direct mode: each image POSTed as a raw body to /v1/classify.

Why aiohttp rather than the standard library in threads: one event loop drives N requests over a
pool of at most N keep-alive connections (`TCPConnector(limit=N)`), so concurrency is a number
and not N threads each owning a socket and its reconnect logic; waiting out a `Retry-After` costs a
timer instead of a parked thread; Ctrl-C cancels every request in flight at once; and the jobs mode
gets multipart uploads from the same library. aiohttp is a dependency of the package already
(aiobotocore, under aioboto3, is built on it), and loads only when the command runs. Like
client/http.py it never uses a proxy from the environment (`trust_env` stays off).

Files are read just before they are sent (off the event loop), so memory holds at most N images;
results are written by one consumer as they arrive, in completion order.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from batchserve.client.http import api_key_headers
from batchserve.client.inputs import content_type_of
from batchserve.client.output import Result, ResultWriter
from batchserve.client.progress import Progress
from batchserve.client.retry import RetryPolicy
from batchserve.client.transport import Answer, RunStopped, error_of, send

__all__ = ["Outcome", "RunSettings", "classify_files", "open_session", "preflight"]

# Fields of a classify answer worth keeping beside the predictions when present.
_PASSED_THROUGH = ("fallback", "cache")


@dataclass(frozen=True)
class RunSettings:
    base_url: str  # without a trailing slash
    model: str | None = None
    top_k: int | None = None
    api_key: str | None = None
    concurrency: int = 8
    timeout_s: float = 60.0
    policy: RetryPolicy = field(default_factory=RetryPolicy)

    def query(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.model is not None:
            params["model"] = self.model
        if self.top_k is not None:
            params["top_k"] = str(self.top_k)
        return params


@dataclass
class Outcome:
    ok: int = 0
    failed: int = 0
    retries: int = 0
    stopped: str | None = None  # why the run stopped early, when it did
    notes: list[str] = field(default_factory=list)  # what else the summary should say

    @property
    def success(self) -> bool:
        return self.failed == 0 and self.stopped is None


def open_session(settings: RunSettings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=settings.concurrency)
    return aiohttp.ClientSession(connector=connector, headers=api_key_headers(settings.api_key),
                                 timeout=aiohttp.ClientTimeout(total=settings.timeout_s))


async def preflight(session: aiohttp.ClientSession, settings: RunSettings) -> None:
    """Ask the server about the model once before sending anything: an unreachable server, a refused
    key or an unknown model stops the run here, with one clear message, instead of failing every image."""
    url = settings.base_url + "/v1/models" + (f"/{urllib.parse.quote(settings.model, safe='')}"
                                              if settings.model else "")
    answer = await send(session, "GET", url, policy=RetryPolicy(max_retries=0))
    if answer.status == 404 and settings.model:
        code, message = error_of(answer.status, answer.body)
        if code == "model_not_found":
            raise RunStopped(f"the server has no model {settings.model!r}: {message}")


async def classify_files(files: list[str], settings: RunSettings, writer: ResultWriter,
                         progress: Progress) -> Outcome:
    outcome = Outcome()
    if not files:
        return outcome
    pending = deque(files)
    arrived: asyncio.Queue[Result | RunStopped] = asyncio.Queue()

    def count_retry(reason: str, wait: float) -> None:
        outcome.retries += 1
        progress.retried()

    async with open_session(settings) as session:
        try:
            await preflight(session, settings)
        except RunStopped as stop:
            outcome.stopped = stop.message
            return outcome

        async def work() -> None:
            while pending:
                path = pending.popleft()
                try:
                    result = await classify_one(session, settings, path, on_retry=count_retry)
                except RunStopped as stop:
                    await arrived.put(stop)
                    return
                except Exception as exc:  # noqa: BLE001 - the consumer waits on this queue: a bug stops the run, said
                    await arrived.put(RunStopped(f"{path}: unexpected {type(exc).__name__}: {exc}"))
                    return
                await arrived.put(result)

        workers = [asyncio.create_task(work()) for _ in range(min(settings.concurrency, len(files)))]
        try:
            for _ in range(len(files)):
                item = await arrived.get()
                if isinstance(item, RunStopped):
                    outcome.stopped = item.message
                    break
                # Off the loop: stdout may be a pipe whose reader is slow.
                await asyncio.to_thread(writer.write, item)
                if item.ok:
                    outcome.ok += 1
                else:
                    outcome.failed += 1
                progress.add(item.ok)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return outcome


async def classify_one(session: aiohttp.ClientSession, settings: RunSettings, path: str,
                       *, on_retry: Callable[[str, float], None] | None = None) -> Result:
    started = time.perf_counter()
    request_id = uuid.uuid4().hex  # the same on every try, so the server's logs tie them together
    try:
        data = await asyncio.to_thread(_read, path)
    except OSError as exc:
        return Result(path, ok=False, error_code="unreadable_file", error_message=exc.strerror or str(exc))
    answer = await send(session, "POST", settings.base_url + "/v1/classify", policy=settings.policy,
                        body=lambda: data, params=settings.query(), on_retry=on_retry,
                        headers={"Content-Type": content_type_of(path), "X-Request-Id": request_id})
    return result_of(path, answer, request_id, elapsed_ms=(time.perf_counter() - started) * 1000)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def result_of(path: str, answer: Answer, request_id: str, *, elapsed_ms: float) -> Result:
    extra: dict[str, Any] = {"attempts": answer.attempts, "elapsed_ms": round(elapsed_ms, 1)}
    answered_id = answer.headers.get("x-request-id") or request_id
    document = answer.json()
    if answer.status == 200 and isinstance(document, dict) and isinstance(document.get("predictions"), list):
        extra.update({key: document[key] for key in _PASSED_THROUGH if key in document})
        return Result(path, ok=True, request_id=document.get("request_id") or answered_id,
                      model=document.get("model"), model_version=document.get("model_version"),
                      predictions=document["predictions"], timing_ms=document.get("timing_ms"), extra=extra)
    extra["http_status"] = answer.status
    if answer.status == 200:
        code, message = "invalid_answer", "the server answered 200 without predictions"
    else:
        code, message = error_of(answer.status, answer.body)
        if answer.attempts > 1:
            message += f" (gave up after {answer.attempts} tries)"
    model = document.get("model") if isinstance(document, dict) else None
    return Result(path, ok=False, request_id=answered_id, model=model, error_code=code, error_message=message,
                  extra=extra)
