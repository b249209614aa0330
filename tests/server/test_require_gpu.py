"""`--require-gpu`: on this CPU-only machine every ONNX Runtime session runs on CPU, so a server
that requires a GPU must say so on /readyz (503 gpu_unavailable, naming the model) and in its log,
while the same server without the flag is ready."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from batchserve.cli import build_parser
from batchserve.loadtest.server_process import free_port, serve_command
from batchserve.model_repo.providers import CPU, CUDA
from batchserve.server.options import from_sources
from batchserve.serving.gpu_requirement import cpu_only, reason

from .conftest import AppFactory, jpeg_bytes


def parse_serve(*argv: str) -> dict:
    args = build_parser().parse_args(["serve", *argv])
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")}


def test_flag_env_and_precedence() -> None:
    assert from_sources(parse_serve(), environ={}).readiness.require_gpu is False
    assert from_sources(parse_serve("--require-gpu"), environ={}).readiness.require_gpu is True
    assert from_sources(parse_serve(), environ={"BATCHSERVE_REQUIRE_GPU": "true"}).readiness.require_gpu is True
    # The flag beats the environment both ways.
    off = from_sources(parse_serve("--no-require-gpu"), environ={"BATCHSERVE_REQUIRE_GPU": "true"})
    assert off.readiness.require_gpu is False
    with pytest.raises(ValueError, match="BATCHSERVE_REQUIRE_GPU"):
        from_sources(parse_serve(), environ={"BATCHSERVE_REQUIRE_GPU": "sometimes"})


def test_a_web_tier_cannot_require_a_gpu_it_does_not_use() -> None:
    with pytest.raises(ValueError, match="--require-gpu checks the models this process runs"):
        from_sources(parse_serve("--require-gpu", "--backend", "remote", "--upstream", "http://10.0.0.5:8000"),
                     environ={})


async def test_readyz_refuses_a_model_on_cpu_when_a_gpu_is_required(
        make_client: AppFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="batchserve.readiness")
    async with make_client(require_gpu=True) as client:
        answers = [await client.get("/readyz") for _ in range(3)]
        for answer in answers:
            assert answer.status_code == 503
            assert "Retry-After" not in answer.headers  # asking again does not bring a GPU
            body = answer.json()
            assert body["status"] == "gpu_unavailable"
            assert body["cpu_only"] == ["tiny v1"]
            assert "tiny v1" in body["message"] and "--require-gpu" in body["message"]
            assert body["models"] == {"tiny": 1}
        v2 = await client.get("/v2/health/ready")
        assert v2.status_code == 503 and "tiny runs on CPU only" in v2.json()["error"]
        metrics = (await client.get("/metrics")).text
        assert "batchserve_server_ready 0.0" in metrics
        # Readiness is the platform's signal; the process itself still answers what reaches it.
        classified = await client.post("/v1/classify", content=jpeg_bytes(), headers={"Content-Type": "image/jpeg"})
        assert classified.status_code == 200
    # One line says why (at start-up), not one per probe.
    lines = [r.getMessage() for r in caplog.records if r.name == "batchserve.readiness"]
    assert len(lines) == 1
    assert "tiny v1 runs on CPU only" in lines[0] and "503 gpu_unavailable" in lines[0]
    assert "onnxruntime-gpu" in lines[0]  # this machine's ONNX Runtime build has no CUDA provider at all


async def test_the_same_server_without_the_flag_is_ready(make_client: AppFactory) -> None:
    async with make_client() as client:
        answer = await client.get("/readyz")
        assert answer.status_code == 200
        assert answer.json() == {"status": "ready", "models": {"tiny": 1}}
        assert (await client.get("/v2/health/ready")).status_code == 200


async def test_reason_tells_a_missing_gpu_build_from_a_failed_cuda_load(make_client: AppFactory) -> None:
    async with make_client(require_gpu=True) as client:
        models = cpu_only(client.app_state.serving.registry.loaded())  # type: ignore[attr-defined]
    assert [m.name for m in models] == ["tiny"]
    assert "offers only CPUExecutionProvider" in reason(models, [CPU])
    assert "failed to load" in reason(models, [CUDA, CPU])  # CUDA offered, the session fell back
    async with make_client(require_gpu=True, execution_providers=(CPU,)) as client:
        asked_cpu = cpu_only(client.app_state.serving.registry.loaded())  # type: ignore[attr-defined]
    assert reason(asked_cpu, [CUDA, CPU]) == "their execution_providers ask for CPU only"


def test_served_process_says_why_in_its_json_log(built_models: Path, tmp_path: Path) -> None:
    """The real command, configured as the Cloud Run profile configures it (environment only)."""
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {"BATCHSERVE_REQUIRE_GPU": "true", "BATCHSERVE_LOG_FORMAT": "json", "BATCHSERVE_EVENTS": "false",
           "BATCHSERVE_MODEL_REPO": str(built_models), "BATCHSERVE_MODELS": "tiny", "PATH": "/usr/bin:/bin"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(serve_command(sys.executable, port, []), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=tmp_path, env=env)
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if answer.json()["status"] != "loading":
                body = (answer.status_code, answer.json())
                break
            time.sleep(0.1)
        assert body is not None, log_path.read_text()
        assert body[0] == 503 and body[1]["status"] == "gpu_unavailable" and body[1]["cpu_only"] == ["tiny v1"]
    finally:
        process.terminate()
        process.wait(timeout=20)
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    refusals = [e for e in entries if e["logger"] == "batchserve.readiness"]
    assert len(refusals) == 1
    assert refusals[0]["severity"] == "ERROR" and "tiny v1 runs on CPU only" in refusals[0]["message"]
