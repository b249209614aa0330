"""Closed-loop HTTP load for the bench: `concurrency` connections, each POSTing the same image back
to back for a fixed time.

`wrk` (C, epoll) is the client of choice: on a two-core machine the load generator shares the
CPU with the server, and wrk spends a few microseconds per request where a Python client spends
hundreds. Without wrk the same measurement runs an aiohttp client in a separate process
(`python -m batchserve.loadtest.http_load ...`), which prints the same JSON line as wrk_post.lua.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from batchserve.batching.stats import nearest_rank

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"
MARKER = "WRK_JSON "
REQUEST_TIMEOUT_S = 30.0


class LoadClientError(RuntimeError):
    """The load client failed to run or printed no result."""


@dataclass(frozen=True)
class LoadResult:
    client: str
    concurrency: int
    seconds: float
    requests: int
    """Responses received, whatever their status."""
    errors: int
    """Responses with status >= 400, plus connect/read/write errors and timeouts."""
    http_errors: int
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    statuses: dict[str, int] | None = None
    """Answers by kind (200, 503 overloaded, other 503, other 5xx, 4xx), when counted (wrk only)."""

    @property
    def ok_per_second(self) -> float:
        return (self.requests - self.http_errors) / self.seconds if self.seconds > 0 else 0.0


def parse_result(output: str, client: str, concurrency: int, count_statuses: bool = False) -> LoadResult:
    line = next((ln for ln in reversed(output.splitlines()) if ln.startswith(MARKER)), None)
    if line is None:
        raise LoadClientError(f"{client} printed no result line; its output was:\n{output[-2000:]}")
    raw = json.loads(line[len(MARKER):])
    errors = raw["errors"]
    lat = raw["latency_us"]
    measured = raw["requests"] > 0

    def ms(key: str) -> float | None:
        return lat[key] / 1000.0 if measured else None

    return LoadResult(
        client=client,
        concurrency=concurrency,
        seconds=raw["duration_us"] / 1e6,
        requests=raw["requests"],
        errors=sum(errors.values()),
        http_errors=errors["status"],
        p50_ms=ms("p50"),
        p90_ms=ms("p90"),
        p95_ms=ms("p95"),
        p99_ms=ms("p99"),
        mean_ms=ms("mean"),
        statuses=raw.get("statuses") if count_statuses else None,
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, body: Path, content_type: str, concurrency: int, duration: float,
            count_statuses: bool = False) -> LoadResult:
    """With `count_statuses`, answers are also counted by kind (wrk then parses every response's headers)."""
    seconds = max(1, math.ceil(duration))  # wrk takes whole seconds
    command = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", f"--timeout={int(REQUEST_TIMEOUT_S)}s",
        "-s", str(WRK_SCRIPT), url, "--", str(body), content_type, *(["statuses"] if count_statuses else []),
    ]
    return _run(command, "wrk", concurrency, seconds, count_statuses)


def run_aiohttp(url: str, body: Path, content_type: str, concurrency: int, duration: float) -> LoadResult:
    command = [sys.executable, "-m", "batchserve.loadtest.http_load", "--url", url, "--body", str(body),
               "--content-type", content_type, "--concurrency", str(concurrency), "--duration", str(duration)]
    return _run(command, "aiohttp", concurrency, duration)


def _run(command: list[str], client: str, concurrency: int, duration: float,
         count_statuses: bool = False) -> LoadResult:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=duration + REQUEST_TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        raise LoadClientError(f"{client} did not finish within {duration + REQUEST_TIMEOUT_S + 30:.0f} s") from None
    except OSError as exc:
        raise LoadClientError(f"cannot run {client}: {exc}") from None
    if proc.returncode != 0:
        raise LoadClientError(f"{client} exited with status {proc.returncode}:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return parse_result(proc.stdout, client, concurrency, count_statuses)


def run_load(url: str, body: Path, content_type: str, concurrency: int, duration: float, client: str) -> LoadResult:
    """client: 'wrk', 'aiohttp', or 'auto' (wrk when installed)."""
    if client == "auto":
        client = "wrk" if wrk_available() else "aiohttp"
    runner = run_wrk if client == "wrk" else run_aiohttp
    return runner(url, body, content_type, concurrency, duration)


# ---- the aiohttp client, run in its own process ----------------------------------------------

async def _closed_loop(url: str, body: bytes, content_type: str, concurrency: int, duration: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    received = 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency)
    start = time.perf_counter()
    deadline = start + duration

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal received
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"Content-Type": content_type}) as resp:
                    await resp.read()
                    received += 1
                    if resp.status >= 400:
                        errors["status"] += 1
                latencies.append((time.perf_counter() - t0) * 1e6)
            except TimeoutError:
                errors["timeout"] += 1
            except aiohttp.ClientConnectorError:
                errors["connect"] += 1
                await asyncio.sleep(0.05)  # a refused connection fails instantly: do not spin
            except aiohttp.ClientError:
                errors["read"] += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies) or [0.0]
    return {
        "duration_us": int(elapsed * 1e6),
        "requests": received,
        "bytes": 0,
        "errors": errors,
        "latency_us": {
            "min": ordered[0], "mean": sum(ordered) / len(ordered), "max": ordered[-1],
            **{f"p{p}": nearest_rank(ordered, p / 100) for p in (50, 90, 95, 99)},
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="closed-loop POST load (aiohttp); prints one JSON line")
    parser.add_argument("--url", required=True, help="full URL to POST to, e.g. http://127.0.0.1:8000/v1/classify")
    parser.add_argument("--body", type=Path, required=True, help="file sent as the request body")
    parser.add_argument("--content-type", default="image/jpeg")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.duration <= 0:
        parser.error("--concurrency and --duration must be positive")
    result = asyncio.run(_closed_loop(args.url, args.body.read_bytes(), args.content_type, args.concurrency,
                                      args.duration))
    print(MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
