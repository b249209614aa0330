"""The acceptance workload: N labelled photos sent at once, every answer checked.

    python loadtest/workload.py --url http://127.0.0.1:8000 [-n 50] [--images DIR] [--model NAME] [--api-key KEY]
                                [--jobs]

Sends N single-image requests concurrently (cycling through the images listed in the folder's
manifest.toml), checks each answer against the manifest's expected classes and prints the
totals. With --jobs (a queue-mode server) the N photos go as one job instead: POST /v1/jobs with
N `image` files, GET /v1/jobs/{id} until the job is finished, and each of its results is checked
the same way. Exits 0 only when every request answered and every prediction was right; 1 otherwise,
2 for bad arguments. Talks to the server over HTTP only.

manifest.toml maps file names to expectations, e.g.
    "chelsea.jpg" = { top1_any_of = [281, 282, 285] }   # the best class is one of these
    "rocket.jpg" = { top2_any_of = [657, 744] }         # one of the two best is one of these
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
import tomllib
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import httpx
import msgspec

from batchserve.client.http import API_KEY_ENV, api_key_headers, resolve_api_key
from batchserve.loadtest.samples import SAMPLE_IMAGES

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                 ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}
EXPECTATION_KEYS = ("top1_any_of", "top2_any_of", "top5_any_of")
FINISHED = ("done", "partial", "failed", "cancelled")  # a job's states once nothing of it is left to run
JOB_POLL_S = 0.25
RESULTS_PAGE = 1000  # the most results GET /v1/jobs/{id} returns at once


class WorkloadError(ValueError):
    """The arguments or the manifest are unusable."""


@dataclass(frozen=True)
class Expectation:
    """The answer is right when one of the `within` best classes is in `classes`."""

    within: int
    classes: frozenset[int]

    def check(self, ranked: list[int]) -> bool:
        return any(c in self.classes for c in ranked[: self.within])


@dataclass(frozen=True)
class LabelledImage:
    name: str
    data: bytes
    content_type: str
    expected: Expectation


@dataclass
class Outcome:
    image: str
    ok: bool  # answered 200 with predictions
    correct: bool = False
    detail: str = ""


_ClassIds = Annotated[list[int], msgspec.Meta(min_length=1)]


class _Entry(msgspec.Struct, frozen=True):
    """One photo's line in manifest.toml, such as {top1_any_of = [281]}; other keys are notes."""

    top1_any_of: _ClassIds | None = None
    top2_any_of: _ClassIds | None = None
    top5_any_of: _ClassIds | None = None

    def __post_init__(self) -> None:
        if sum(getattr(self, key) is not None for key in EXPECTATION_KEYS) != 1:
            raise ValueError(f"needs exactly one of {', '.join(EXPECTATION_KEYS)}")

    def expectation(self) -> Expectation:
        key, classes = next((k, getattr(self, k)) for k in EXPECTATION_KEYS if getattr(self, k) is not None)
        return Expectation(int(key[3]), frozenset(classes))


def _expectation(path: Path, name: str, entry: object) -> Expectation:
    try:
        return msgspec.convert(entry, _Entry).expectation()
    except msgspec.ValidationError as exc:  # the message ends with the key, e.g. `$.top1_any_of`
        raise WorkloadError(f"{path}: entry {name!r}: {exc}") from None


def load_manifest(folder: Path) -> list[LabelledImage]:
    path = folder / "manifest.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WorkloadError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorkloadError(f"{path} is not valid TOML: {exc}") from None
    images = []
    for name, entry in sorted(raw.items()):
        file = folder / name
        if not file.is_file():
            raise WorkloadError(f"{path} lists {name!r}, which is not a file in {folder}")
        content_type = CONTENT_TYPES.get(file.suffix.lower(), "application/octet-stream")
        images.append(LabelledImage(name, file.read_bytes(), content_type, _expectation(path, name, entry)))
    if not images:
        raise WorkloadError(f"{path} lists no images")
    return images


async def _classify(client: httpx.AsyncClient, url: str, image: LabelledImage, params: dict[str, str],
                    timeout: float) -> Outcome:
    request = client.post(url, content=image.data, headers={"Content-Type": image.content_type},
                          params={**params, "top_k": str(image.expected.within)})
    try:
        # httpx's timeout bounds each read or write; wait_for bounds the whole exchange.
        resp = await asyncio.wait_for(request, timeout)
    except TimeoutError:
        return Outcome(image.name, False, detail=f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return Outcome(image.name, False, detail=f"{type(exc).__name__}: {exc}")
    if resp.status_code != 200:
        return Outcome(image.name, False, detail=f"HTTP {resp.status_code}: {resp.text[:200]}")
    try:
        ranked = [int(p["class_id"]) for p in resp.json()["predictions"]]
    except (ValueError, KeyError, TypeError):
        return Outcome(image.name, False, detail=f"unexpected answer: {resp.text[:200]}")
    correct = image.expected.check(ranked)
    return Outcome(image.name, True, correct, "" if correct else f"predicted {ranked}")


async def run(url: str, images: list[LabelledImage], n: int, model: str | None, timeout: float,
              api_key: str | None = None) -> list[Outcome]:
    """All N requests at once, on N connections; each bounded by `timeout` seconds."""
    params = {"model": model} if model else {}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    # trust_env=False: the server is addressed directly, never through a proxy from the environment.
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), limits=limits, trust_env=False,
                                 headers=api_key_headers(api_key)) as client:
        batch = itertools.islice(itertools.cycle(images), n)
        return await asyncio.gather(*(_classify(client, url + "/v1/classify", im, params, timeout) for im in batch))


def _ranked(answer: dict[str, object]) -> list[int] | None:
    """The class ids of an answer's predictions, best first; None when it holds none."""
    predictions = answer.get("predictions")
    if not isinstance(predictions, list):
        return None
    try:
        return [int(p["class_id"]) for p in predictions]
    except (KeyError, TypeError, ValueError):
        return None


def _job_outcome(image: LabelledImage, result: dict[str, object]) -> Outcome:
    if result.get("image_file_name") not in (None, image.name):
        return Outcome(image.name, False, detail=f"the job's result is for {result.get('image_file_name')!r}")
    ranked = _ranked(result)
    if result.get("status") != "done" or ranked is None:
        error = result.get("error")
        detail = f"{error.get('code')}: {error.get('message')}" if isinstance(error, dict) else str(result)[:200]
        return Outcome(image.name, False, detail=f"{result.get('status')}, {detail}")
    correct = image.expected.check(ranked)
    return Outcome(image.name, True, correct, "" if correct else f"predicted {ranked}")


class _JobFailed(Exception):
    """The job could not be submitted or followed to its end; every image counts as failed."""


async def _job_answer(request: Awaitable[httpx.Response], expected: int, what: str) -> dict[str, object]:
    try:
        resp = await request
    except httpx.HTTPError as exc:
        raise _JobFailed(f"{what}: {type(exc).__name__}: {exc}") from None
    if resp.status_code != expected:
        raise _JobFailed(f"{what}: HTTP {resp.status_code}: {resp.text[:200]}")
    try:
        answer = resp.json()
    except ValueError:
        raise _JobFailed(f"{what}: unexpected answer: {resp.text[:200]}") from None
    if not isinstance(answer, dict):
        raise _JobFailed(f"{what}: unexpected answer: {resp.text[:200]}")
    return answer


async def _follow_job(client: httpx.AsyncClient, url: str, batch: list[LabelledImage], params: dict[str, str],
                      deadline: float) -> list[dict[str, object]]:
    files = [("image", (image.name, image.data, image.content_type)) for image in batch]
    accepted = await _job_answer(client.post(url + "/v1/jobs", files=files, params=params), 202, "POST /v1/jobs")
    job = f"{url}/v1/jobs/{accepted.get('job_id')}"
    while True:
        state = await _job_answer(client.get(job, params={"limit": "0"}), 200, "GET the job")
        if state.get("status") in FINISHED:
            break
        if time.monotonic() > deadline:
            raise _JobFailed(f"the job was not finished in time ({state.get('status')}, {state.get('done')} of "
                             f"{len(batch)} done)")
        await asyncio.sleep(JOB_POLL_S)
    results: list[dict[str, object]] = []
    while len(results) < len(batch):
        page = await _job_answer(client.get(job, params={"offset": str(len(results)), "limit": str(RESULTS_PAGE)}),
                                 200, "GET the job's results")
        got = page.get("results")
        if not isinstance(got, list) or not got:
            break
        results += [r if isinstance(r, dict) else {} for r in got]
    return results


async def run_job(url: str, images: list[LabelledImage], n: int, model: str | None, timeout: float,
                  api_key: str | None = None) -> list[Outcome]:
    """The N photos as one job (top_k: as many as the most demanding expectation looks at), followed
    until it is finished; the whole exchange is bounded by `timeout` seconds."""
    batch = list(itertools.islice(itertools.cycle(images), n))
    params = {"top_k": str(max(image.expected.within for image in batch)), **({"model": model} if model else {})}
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), trust_env=False,
                                 headers=api_key_headers(api_key)) as client:
        try:
            results = await _follow_job(client, url, batch, params, time.monotonic() + timeout)
        except _JobFailed as exc:
            return [Outcome(image.name, False, detail=str(exc)) for image in batch]
    outcomes = [_job_outcome(image, result) for image, result in zip(batch, results, strict=False)]
    return outcomes + [Outcome(image.name, False, detail="the job has no result for it")
                       for image in batch[len(results):]]


def report(outcomes: list[Outcome], seconds: float) -> str:
    completed = [o for o in outcomes if o.ok]
    correct = sum(o.correct for o in completed)
    lines = [
        f"total requests: {len(outcomes)}",
        f"completed: {len(completed)}",
        f"failed: {len(outcomes) - len(completed)}",
        f"correct: {correct}",
        f"wrong: {len(completed) - correct}",
        f"duration: {seconds:.2f} s",
    ]
    problems = [o for o in outcomes if not (o.ok and o.correct)]
    for o in problems[:10]:
        lines.append(f"  {o.image}: {'wrong, ' if o.ok else 'failed, '}{o.detail}")
    if len(problems) > 10:
        lines.append(f"  ... and {len(problems) - 10} more")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("-n", type=int, default=50, help="number of requests, all sent at once (default 50)")
    parser.add_argument("--images", type=Path, default=SAMPLE_IMAGES,
                        help="folder with manifest.toml (default: the shipped sample photos)")
    parser.add_argument("--model", default=None, help="model query parameter (default: the server's default)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per request (default 60)")
    parser.add_argument("--api-key", default=None, help=f"API key to send (env {API_KEY_ENV})")
    parser.add_argument("--jobs", action="store_true",
                        help="send the photos as one job (POST /v1/jobs, a queue-mode server) and check its results; "
                             "--timeout then bounds the whole job")
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        parser.error(f"--url must be an http(s) URL such as http://127.0.0.1:8000, not {args.url!r}")
    if args.n < 1 or args.timeout <= 0:
        parser.error("-n and --timeout must be positive")
    try:
        images = load_manifest(args.images)
    except WorkloadError as exc:
        print(f"workload: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    send = run_job if args.jobs else run
    outcomes = asyncio.run(send(args.url.rstrip("/"), images, args.n, args.model, args.timeout,
                                resolve_api_key(args.api_key)))
    print(report(outcomes, time.perf_counter() - started))
    return 0 if all(o.ok and o.correct for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
