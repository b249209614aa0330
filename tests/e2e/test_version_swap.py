"""Swapping model versions on a live server under concurrent load: no request may fail, and once a
load has answered, every request that starts afterwards is served by the new version."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from batchserve.loadtest.server_process import ServerProcess
from batchserve.model_repo.build import build_model
from batchserve.model_repo.repository import DEFAULT_REPOSITORY
from tests.server.conftest import jpeg_bytes

pytestmark = pytest.mark.slow
ADMIN_KEY = "swap-key"
WORKERS = 12


@dataclass(frozen=True)
class Answer:
    started: float
    finished: float
    status: int
    version: int | None


def set_policy(repo: Path, policy: str) -> None:
    config = repo / "tiny" / "config.toml"
    config.write_text(config.read_text().split("[versions]")[0] + "[versions]\n" + policy + "\n")


async def cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchserve", "models", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, out.decode()


async def test_versions_swap_under_load_without_a_failed_request(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "tiny").mkdir(parents=True)
    shutil.copy(DEFAULT_REPOSITORY / "tiny" / "config.toml", repo / "tiny" / "config.toml")
    build_model("tiny", repo, version=1, progress=lambda _msg: None)
    server = ServerProcess("--model-repo", str(repo), "--models", "tiny", "--model-control", "explicit",
                           "--admin-key", ADMIN_KEY, "--no-events", cwd=tmp_path)
    answers: list[Answer] = []
    stop = asyncio.Event()
    image = jpeg_bytes(size=(320, 240))

    async def hammer(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            response = await client.post("/v1/classify?model=tiny&top_k=1", content=image,
                                         headers={"Content-Type": "image/jpeg"})
            version = response.json().get("model_version") if response.status_code == 200 else None
            answers.append(Answer(started, time.monotonic(), response.status_code, version))

    async def served_after(moment: float, version: int, count: int = 30, timeout: float = 60.0) -> None:
        """Wait (bounded) until `count` requests that started after `moment` have answered."""
        end = time.monotonic() + timeout
        while sum(1 for a in answers if a.started > moment) < count:
            assert time.monotonic() < end, f"no traffic after the swap to v{version}"
            await asyncio.sleep(0.05)

    with server:
        limits = httpx.Limits(max_connections=WORKERS)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            workers = [asyncio.create_task(hammer(client)) for _ in range(WORKERS)]
            try:
                await served_after(0.0, 1)

                # A new version appears on disk; the default policy (latest 1) then serves only it.
                await asyncio.to_thread(build_model, "tiny", repo, version=2, progress=lambda _msg: None)
                rc, out = await cli("load", "tiny", "--url", server.url, "--admin-key", ADMIN_KEY)
                assert rc == 0, out
                to_v2 = time.monotonic()
                await served_after(to_v2, 2)

                # Back to version 1 by policy, through the HTTP route this time.
                set_policy(repo, 'policy = "specific"\nspecific = [1]')
                asked_for_v1 = time.monotonic()
                response = await client.post("/v2/repository/models/tiny/load", headers={"X-Admin-Key": ADMIN_KEY})
                assert response.status_code == 200 and response.json()["versions"] == ["1"]
                to_v1 = time.monotonic()
                await served_after(to_v1, 1)
            finally:
                stop.set()
                await asyncio.gather(*workers)

            failed = [a for a in answers if a.status != 200]
            assert not failed, f"{len(failed)} of {len(answers)} requests failed during the swaps: {failed[:5]}"
            # A request in flight while a swap happens may be served by either version; one that ran
            # entirely between two swaps has exactly one choice.
            stale = [a for a in answers if to_v2 < a.started and a.finished < asked_for_v1 and a.version != 2]
            assert not stale, f"started after the swap to v2 but not served by it: {stale[:5]} (swap at {to_v2})\n" \
                f"{server.log()[-4000:]}"
            stale = [a for a in answers if a.started > to_v1 and a.version != 1]
            assert not stale, f"started after the swap to v1 but not served by it: {stale[:5]} (swap at {to_v1})"
            before = [a.version for a in answers if a.started < to_v2]
            assert set(before) <= {1, 2} and before.count(1) >= 30

            rc, out = await cli("unload", "tiny", "--url", server.url, "--admin-key", "wrong")
            assert rc == 1 and "HTTP 401" in out
            rc, out = await cli("unload", "tiny", "--url", server.url, "--admin-key", ADMIN_KEY)
            assert rc == 0, out
            assert (await client.post("/v1/classify?model=tiny", content=image)).status_code == 404
    assert "retired tiny v1" in server.log() and "retired tiny v2" in server.log()
