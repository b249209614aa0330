"""Queue mode against a real local AWS: moto's server in its own process on 127.0.0.1, reached
over the socket by aioboto3 (in tests) and by `batchserve worker` / `batchserve queue` processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from batchserve.jobs.aws import connect
from batchserve.jobs.config import QueueConfig
from batchserve.loadtest.server_process import free_port
from tests.jobs.queue_helpers import Deployment, new_deployment, point_aws_at

MOTO_START_TIMEOUT_S = 30


def start_moto(port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m moto.server` on 127.0.0.1:`port`, returned once it accepts connections."""
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + MOTO_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited with {process.returncode}: {log_path.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"moto did not listen on port {port} within {MOTO_START_TIMEOUT_S} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(autouse=True)
def aws_environment(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials moto accepts and its endpoint, for this process and the processes it starts."""
    point_aws_at(moto_endpoint, monkeypatch)
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


@pytest.fixture
async def deployment(moto_endpoint: str) -> AsyncIterator[Deployment]:
    """A fresh deployment (its own buckets and queues) brought up for one test and removed after."""
    async with new_deployment(QueueConfig(queue_name=None, aws_endpoint_url=moto_endpoint)) as created:
        yield created


@pytest.fixture
async def aws(moto_endpoint: str) -> AsyncIterator[object]:
    async with connect(QueueConfig(aws_endpoint_url=moto_endpoint)) as clients:
        yield clients
