"""Running `batchserve bench --remote` (see bench_remote.py): the processes, the rounds, the samples."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from batchserve.loadtest.bench import model_info, small_jpeg, wait_idle
from batchserve.loadtest.bench_remote import RemoteBenchSettings, cpu_seconds, summarise
from batchserve.loadtest.bench_remote_protocols import compare
from batchserve.loadtest.bench_report import machine
from batchserve.loadtest.http_load import LoadClientError, run_load, wrk_available
from batchserve.loadtest.server_process import ServerProcess, start_server

MODEL = "simulated"
SIDES = ("backend", "web")


def _measure(side: str, backend: ServerProcess, web: ServerProcess, image: Path, concurrency: int,
             settings: RemoteBenchSettings) -> dict[str, Any]:
    """One closed-loop run against one side, with both processes' CPU time over it."""
    target = web if side == "web" else backend
    started = time.monotonic()
    cpu_before = {"web": cpu_seconds(web.process.pid), "backend": cpu_seconds(backend.process.pid)}
    result = run_load(f"{target.url}/v1/classify?model={MODEL}", image, "image/jpeg", concurrency,
                      settings.duration, settings.client)
    wait_idle(backend, MODEL)  # what the load left running is charged to this run, not the next
    cpu_after = {"web": cpu_seconds(web.process.pid), "backend": cpu_seconds(backend.process.pid)}
    answered = max(1, result.requests)
    return {
        "p50_ms": result.p50_ms or 0.0, "p99_ms": result.p99_ms, "per_s": result.ok_per_second,
        "requests": result.requests, "errors": result.errors, "seconds": time.monotonic() - started,
        "web_cpu_s": cpu_after["web"] - cpu_before["web"],
        "web_cpu_ms": (cpu_after["web"] - cpu_before["web"]) * 1000.0 / answered,
        "backend_cpu_ms": (cpu_after["backend"] - cpu_before["backend"]) * 1000.0 / answered,
    }


def _round(number: int, settings: RemoteBenchSettings, backend: ServerProcess, web: ServerProcess, image: Path,
           say: Callable[[str], None]) -> dict[str, Any]:
    order = SIDES if number % 2 == 0 else tuple(reversed(SIDES))
    load: dict[str, Any] = {}
    for c in settings.concurrency:
        pair = {side: _measure(side, backend, web, image, c, settings) for side in order}
        load[str(c)] = pair
        say(f"  c={c:>3}: backend {pair['backend']['per_s']:7.1f} img/s p50 {pair['backend']['p50_ms']:6.1f} ms; "
            f"web {pair['web']['per_s']:7.1f} img/s p50 {pair['web']['p50_ms']:6.1f} ms, "
            f"web CPU {pair['web']['web_cpu_ms']:.2f} ms/request")
    protocols = compare(backend.url, MODEL, image.read_bytes(), settings.protocol_exchanges,
                        v2_first=number % 2 == 1)
    say(f"  forwarding CPU per exchange: v1 raw {protocols['v1_raw']['cpu_us']:.0f} us, "
        f"V2 binary {protocols['v2_binary']['cpu_us']:.0f} us")
    return {"order": list(order), "load": load, "protocols": protocols}


def run_remote_bench(settings: RemoteBenchSettings, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    client = settings.client if settings.client != "auto" else ("wrk" if wrk_available() else "aiohttp")
    if client == "wrk" and not wrk_available():
        raise LoadClientError("wrk is not installed (apt-get install wrk), use --client aiohttp")
    settings = replace(settings, client=client)
    scratch = Path(tempfile.mkdtemp(prefix="batchserve-bench-remote-"))
    servers: list[ServerProcess] = []
    try:
        image = settings.image or small_jpeg(scratch)
        say(f"starting a simulated backend ({settings.simulate_cost} ms) and a web tier in front of it")
        backend = start_server(["--simulate-model", settings.simulate_cost, "--no-events"], log_dir=scratch)
        servers.append(backend)
        web = start_server(["--backend", "remote", "--upstream", backend.url, "--no-events"], log_dir=scratch)
        servers.append(web)
        max_batch = model_info(backend, MODEL)["batching"]["max_batch_size"]
        info = {"machine": machine(), "client": client, "image": str(image), "image_bytes": image.stat().st_size,
                "backend": {"cost_ms": settings.simulate_cost, "max_batch_size": max_batch}}
        say("warming up")
        # Through the web tier, which forwards to the backend: one warm-up warms both.
        run_load(f"{web.url}/v1/classify?model={MODEL}", image, "image/jpeg", max(settings.concurrency), 1.0, client)
        wait_idle(backend, MODEL)
        rounds = []
        for number in range(settings.repeats):
            say(f"round {number + 1} of {settings.repeats}")
            rounds.append(_round(number, settings, backend, web, image, say))
        return summarise(settings, rounds, info)
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
