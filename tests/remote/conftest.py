"""Real processes for the remote backend: upstreams (`--no-events`) and web tiers in front of them.

One set per test session, started in parallel (each process spends seconds importing): the real
model, two fast simulated upstreams (one under `--auth required`), a simulated one that admits one
request at a time, a web tier forwarding to all four with the right key, and one with a wrong key.
The tests that kill upstreams run last (test_remote_faults.py).
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from batchserve.loadtest.server_process import ServerProcess, serve_command

UPSTREAM_KEY = "remote-tests-upstream-key-5d1c"
FAST_SIM = ("--simulate-model", "5+0.5", "--no-events")
TIGHT_SIM = ("--simulate-model", "50+0", "--max-concurrent-requests", "1", "--no-events")
# Checks every 0.2 s, so the tests see an upstream leave and rejoin the rotation quickly.
WEB = ("--backend", "remote", "--upstream-check-interval-s", "0.2", "--events-flush-interval-ms", "50")


@dataclass
class Cluster:
    real: ServerProcess  # EfficientNet-Lite0 in direct mode: also the reference answers come from it
    fast_a: ServerProcess
    fast_b: ServerProcess  # under --auth required, with UPSTREAM_KEY as its admin key
    tight: ServerProcess  # admits one request at a time: the others get 503 overloaded + Retry-After
    web: ServerProcess  # -> real, fast_a, fast_b, tight, sending UPSTREAM_KEY; events in web_events
    web_wrong_key: ServerProcess  # -> fast_b with a wrong key: never ready
    web_events: Path


def start_all(processes: list[ServerProcess], ready: list[bool]) -> None:
    """Start them side by side; `ready[i]` False: only wait until it listens (/healthz)."""
    with concurrent.futures.ThreadPoolExecutor(len(processes)) as pool:
        futures = [pool.submit(p.start if r else lambda p=p: start_listening(p))
                   for p, r in zip(processes, ready, strict=True)]
        for future in futures:
            future.result()


def start_listening(process: ServerProcess, timeout: float = 90.0) -> None:
    """Start a server that is not expected to become ready; return once it answers /healthz."""
    process.cwd.mkdir(parents=True, exist_ok=True)
    with process.log_path.open("wb") as log:
        process._process = subprocess.Popen(  # the same child ServerProcess.start makes
            serve_command(process.python, process.port, process.args), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=process.cwd, env=process.env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(f"the web tier exited:\n{process.log_tail()}")
        try:
            if httpx.get(process.url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the web tier did not listen within {timeout:.0f} s:\n{process.log_tail()}")


def restart_on_same_port(old: ServerProcess) -> ServerProcess:
    """The same server again where `old` listened (its port is free once it died)."""
    new = ServerProcess(*old.args, cwd=old.cwd)
    new.port, new.url = old.port, old.url
    new.log_path = old.cwd / f"server-{old.port}-again.log"
    return new


@pytest.fixture(scope="session")
def cluster(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cwd = tmp_path_factory.mktemp("remote")
    # Batches of 8 at most: its warm-up (a batch of the largest size) takes a quarter of the time.
    real = ServerProcess("--models", "efficientnet_lite0", "--model-repo", str(built_models), "--no-events",
                         "--max-batch-size", "8", cwd=cwd / "real")
    fast_a = ServerProcess(*FAST_SIM, cwd=cwd / "a")
    fast_b = ServerProcess(*FAST_SIM, "--auth", "required", "--admin-key", UPSTREAM_KEY, cwd=cwd / "b")
    tight = ServerProcess(*TIGHT_SIM, cwd=cwd / "tight")
    upstreams = [real, fast_a, fast_b, tight]
    web = ServerProcess(*WEB, "--upstream", ",".join(s.url for s in upstreams), "--upstream-api-key", UPSTREAM_KEY,
                        "--events-path", str(cwd / "web" / "events.sqlite3"), "--journal-dir", str(cwd / "web" / "j"),
                        cwd=cwd / "web")
    wrong = ServerProcess(*WEB, "--upstream", fast_b.url, "--upstream-api-key", "not-the-key", "--no-events",
                          cwd=cwd / "wrong-key")
    try:
        start_all(upstreams, [True] * len(upstreams))
        start_all([web, wrong], [True, False])
        yield Cluster(real, fast_a, fast_b, tight, web, wrong, web_events=cwd / "web" / "events.sqlite3")
    finally:
        for process in (web, wrong, *upstreams):
            process.stop(timeout=10)
