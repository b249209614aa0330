"""Locust users for `POST /v1/classify`.

Run through `batchserve loadtest` (which starts Locust headless in a subprocess), or directly:

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 RawImageUser

Locust monkey-patches the standard library with gevent at import, so this file is only ever
imported by a Locust process; it depends on nothing but the standard library and Locust, and it
talks to the server over HTTP only.

Options (each also read from an environment variable):
  --images DIR        folder of images to send (BATCHSERVE_LOADTEST_IMAGES; default: the sample photos)
  --model NAME        `model` query parameter (BATCHSERVE_LOADTEST_MODEL; default: the server's default)
  --user-rps R        each user sends R requests/s (constant throughput from a random start phase), so
                      the offered rate is users x R (BATCHSERVE_LOADTEST_USER_RPS; default 0: back to back)
  Authorization       `Bearer KEY` when BATCHSERVE_LOADTEST_API_KEY (or BATCHSERVE_API_KEY) is set; `batchserve
                      loadtest --api-key KEY` sets the former
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import events, task
from locust.contrib.fasthttp import FastHttpUser

# batchserve.loadtest.samples.SAMPLE_IMAGES, found from this file because it imports nothing of
# batchserve (see above); `batchserve loadtest` passes --images explicitly.
DEFAULT_IMAGES = Path(__file__).resolve().parent / "sample_images"
API_KEY_ENVS = ("BATCHSERVE_LOADTEST_API_KEY", "BATCHSERVE_API_KEY")
IMAGE_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                  ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}
MULTIPART_FILES = (2, 5)  # files per multipart request, inclusive range


@dataclass(frozen=True)
class ImageFile:
    name: str
    content_type: str
    data: bytes


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    parser.add_argument("--images", type=str, env_var="BATCHSERVE_LOADTEST_IMAGES", default=str(DEFAULT_IMAGES),
                        help="folder of images to send")
    parser.add_argument("--model", type=str, env_var="BATCHSERVE_LOADTEST_MODEL", default="",
                        help="model query parameter (default: the server's default model)")
    parser.add_argument("--user-rps", type=float, env_var="BATCHSERVE_LOADTEST_USER_RPS", default=0.0,
                        help="requests/s per user at constant throughput (default 0: back to back)")


_environment: list[Any] = []  # the run's Environment, kept for the quit event (which does not pass it)


@events.init.add_listener
def _keep_environment(environment: Any, **_kwargs: Any) -> None:
    _environment.append(environment)


@events.quit.add_listener
def _write_summary(**_kwargs: Any) -> None:
    """Write `<csv prefix>_summary.json`: the Aggregated figures as they stand at exit.

    Locust rewrites `_stats.csv` once a second while running and not again when it stops, so the
    CSV misses up to the last second of requests; this file is complete."""
    if not _environment:
        return
    environment = _environment[-1]
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix:
        return
    total = environment.stats.total
    measured = total.num_requests > 0

    def pct(p: float) -> float | None:
        return float(total.get_response_time_percentile(p)) if measured else None

    summary = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": total.total_rps,
        "p50_ms": pct(0.5),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": float(total.max_response_time) if measured else None,
    }
    Path(prefix + "_summary.json").write_text(json.dumps(summary) + "\n", encoding="utf-8")


def load_images(folder: Path) -> list[ImageFile]:
    """Every image file of the folder (by extension), read once: requests then cost no disk I/O."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    found = [
        ImageFile(p.name, IMAGE_SUFFIXES[p.suffix.lower()], p.read_bytes())
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not found:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return found


def encode_multipart(files: list[ImageFile], boundary: str) -> bytes:
    """A multipart/form-data body with one `image` part per file. Built by hand because the
    body is then plain bytes for FastHttpUser, which is several times cheaper per request than
    the requests-based HttpUser: the load generator shares the server's two cores."""
    chunks: list[bytes] = []
    for f in files:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{f.name}"\r\n'
            f"Content-Type: {f.content_type}\r\n\r\n".encode()
        )
        chunks.append(f.data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


class Pacer:
    """Constant throughput for one user: sends `interval` apart. A send that ends late starts the
    next one at once and the schedule continues from there, without catching up (as Locust's
    `constant_throughput`, whose bookkeeping starts when the user is created and so cannot take
    the random start phase below)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at = time.monotonic()

    def start_phase(self) -> float:
        """A random offset within one interval. Locust starts users in groups (as many a second
        as the spawn rate), and users that all sent at their start would stay in step and arrive
        in bursts; random phases spread the offered load over every interval."""
        return random.uniform(0.0, self.interval)

    def restart(self) -> None:
        self.next_at = time.monotonic()

    def wait(self) -> float:
        now = time.monotonic()
        self.next_at = max(self.next_at + self.interval, now)
        return self.next_at - now


class ClassifyUser(FastHttpUser):
    """Shared set-up: images, headers and the classify path. Users send back to back (closed
    loop, no think time: the concurrency is the number of users), or with --user-rps at a
    constant rate each (the offered rate is then users x rate, whatever the latency, as long as
    one request takes less than 1/rate)."""

    abstract = True
    _images: list[ImageFile] | None = None
    pacer: Pacer | None = None

    def wait_time(self) -> float:
        return self.pacer.wait() if self.pacer is not None else 0.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        folder = Path(getattr(options, "images", "") or DEFAULT_IMAGES)
        if ClassifyUser._images is None:
            ClassifyUser._images = load_images(folder)
        self.images = ClassifyUser._images
        model = getattr(options, "model", "") or ""
        self.path = "/v1/classify" + (f"?model={model}" if model else "")
        self.headers: dict[str, str] = {}
        api_key = next((os.environ[name] for name in API_KEY_ENVS if os.environ.get(name)), None)
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        # Users start at different points of the image list so concurrent requests differ.
        self.cycle = itertools.islice(itertools.cycle(self.images), random.randrange(len(self.images)), None)
        user_rps = float(getattr(options, "user_rps", 0) or 0)
        if user_rps > 0:
            self.pacer = Pacer(user_rps)
            time.sleep(self.pacer.start_phase())  # gevent's sleep: Locust patched `time` at import
            self.pacer.restart()

    def _post(self, body: bytes, content_type: str, name: str, expected_results: int | None) -> None:
        headers = {**self.headers, "Content-Type": content_type}
        # Locust annotates `data` as str or dict, but FastHttpSession sends bytes as they are (an image is bytes).
        with self.client.post(self.path, data=body, headers=headers, name=name,  # type: ignore[arg-type]
                              catch_response=True) as resp:
            if resp.status_code == 0:  # FastHttpUser's way of saying there was no response
                resp.failure(f"no answer: {resp.error!r}")
                return
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {_error_message(resp.content)}")
                return
            try:
                answer = json.loads(resp.content)
            except ValueError:
                resp.failure("the answer is not JSON")
                return
            if expected_results is None:
                if not answer.get("predictions"):
                    resp.failure("the answer has no predictions")
            else:
                results = answer.get("results") or []
                errors = [r["error"]["code"] for r in results if "error" in r]
                if len(results) != expected_results or errors:
                    resp.failure(f"{len(results)} results for {expected_results} files, errors: {errors}")

    def send_raw(self) -> None:
        image = next(self.cycle)
        self._post(image.data, image.content_type, "/v1/classify [raw]", None)

    def send_multipart(self) -> None:
        files = [next(self.cycle) for _ in range(random.randint(*MULTIPART_FILES))]
        boundary = uuid.uuid4().hex
        body = encode_multipart(files, boundary)
        self._post(body, f"multipart/form-data; boundary={boundary}", "/v1/classify [multipart]", len(files))


def _error_message(content: bytes | None) -> str:
    try:
        error = json.loads(content or b"")["error"]
        return error["message"] if isinstance(error, dict) else str(error)
    except (ValueError, KeyError, TypeError):
        return (content or b"")[:200].decode("utf-8", "replace")


class RawImageUser(ClassifyUser):
    """One image per request, as the raw body."""

    @task
    def raw(self) -> None:
        self.send_raw()


class MultipartUser(ClassifyUser):
    """2 to 5 images per request, as multipart `image` files."""

    @task
    def multipart(self) -> None:
        self.send_multipart()


class MixedUser(ClassifyUser):
    """Three single-image requests for every multipart one: interactive clients next to batch uploads."""

    @task(3)
    def raw(self) -> None:
        self.send_raw()

    @task(1)
    def multipart(self) -> None:
        self.send_multipart()
