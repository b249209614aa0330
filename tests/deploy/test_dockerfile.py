"""Dockerfile.gpu: hadolint-clean, and the structure the GPU image depends on (checked with dockerfile-parse)."""

from __future__ import annotations

import http.server
import io
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.gpu"
HADOLINT = Path(sys.executable).with_name("hadolint")


@pytest.fixture(scope="module")
def parsed() -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))


def stages(parsed: DockerfileParser) -> list[list[dict]]:
    """Instructions grouped by stage (a new list at every FROM); comments dropped."""
    groups: list[list[dict]] = []
    for instruction in parsed.structure:
        if instruction["instruction"] == "FROM":
            groups.append([])
        if groups and instruction["instruction"] != "COMMENT":
            groups[-1].append(instruction)
    return groups


def values(stage: list[dict], kind: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == kind]


def test_hadolint_is_clean_with_the_checked_in_config() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_hadolint_rule_is_justified() -> None:
    text = (ROOT / ".hadolint.yaml").read_text()
    config = yaml.safe_load(text)
    assert config["failure-threshold"] == "info"
    for rule in config.get("ignored", []):
        comment = re.search(rf"#\s*{rule}\b.*", text)
        assert comment and len(comment.group(0)) > 40, f"{rule} is ignored without a reason"


def test_base_image_is_cuda12_cudnn9_runtime_on_ubuntu_2404(parsed: DockerfileParser) -> None:
    assert len(parsed.parent_images) == 2  # build and runtime stages
    for image in parsed.parent_images:
        assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", image), image
    assert [v.split()[-1] for v in values(sum(stages(parsed), []), "FROM")] == ["build", "runtime"]


def test_build_stage_swaps_in_onnxruntime_gpu_for_cuda_12(parsed: DockerfileParser) -> None:
    build = stages(parsed)[0]
    runs = values(build, "RUN")
    install = next(r for r in runs if "onnxruntime-gpu" in r)
    assert "pip uninstall -y onnxruntime" in install
    spec = SpecifierSet(re.search(r'"onnxruntime-gpu([^"]+)"', install).group(1))
    # 1.22-1.26 are the CUDA 12 + cuDNN 9 builds; 1.27+ need CUDA 13 (driver >= 580).
    assert "1.22.0" in spec and "1.26.0" in spec
    assert "1.21.1" not in spec and "1.27.0" not in spec
    assert any(r.strip() == "batchserve models build efficientnet_lite0" for r in runs)


def test_pillow_simd_is_installed_last_after_removing_pillow(parsed: DockerfileParser) -> None:
    runs = values(stages(parsed)[0], "RUN")
    pip_runs = [i for i, r in enumerate(runs) if "pip install" in r]
    simd = next(i for i, r in enumerate(runs) if "pillow-simd" in r)
    assert simd == pip_runs[-1], "a pip install after pillow-simd could bring Pillow back"
    command = runs[simd]
    assert command.index("pip uninstall -y pillow") < command.index("pip install")
    assert "--no-deps" in command and "libjpeg_turbo" in command
    assert re.search(r'"pillow-simd==[0-9.]+(post\d+)?"', command)
    assert "libjpeg-turbo8-dev" in runs[0] and "zlib1g-dev" in runs[0]


def test_runtime_stage_is_lean_non_root_and_json_form(parsed: DockerfileParser) -> None:
    runtime = stages(parsed)[-1]
    apt = values(runtime, "RUN")[0]
    for package in ("python3.12", "libjpeg-turbo8", "zlib1g"):
        assert re.search(rf"\b{re.escape(package)}\b", apt)
    assert "-dev" not in apt and "build-essential" not in apt
    assert "--from=build /opt/venv /opt/venv" in values(runtime, "COPY")
    user = values(runtime, "USER")
    assert user and user[-1].isdigit() and int(user[-1]) >= 1000  # numeric, not root
    assert values(runtime, "EXPOSE") == ["8000"]
    assert values(runtime, "STOPSIGNAL") == ["SIGTERM"]
    assert json.loads(values(runtime, "CMD")[-1]) == ["batchserve", "serve"]
    healthcheck = values(runtime, "HEALTHCHECK")[-1]
    assert "--start-period=" in healthcheck
    probe = json.loads(healthcheck.split("CMD", 1)[1].strip())
    assert probe[0] == "python" and "/healthz" in probe[-1]
    env = " ".join(values(runtime, "ENV"))
    assert "PORT=8000" in env and "BATCHSERVE_HOST=0.0.0.0" in env


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_healthcheck_command_passes_on_a_live_server_and_fails_without_one(
    parsed: DockerfileParser, health_server: int
) -> None:
    healthcheck = values(stages(parsed)[-1], "HEALTHCHECK")[-1]
    probe = json.loads(healthcheck.split("CMD", 1)[1].strip())
    command = [sys.executable, *probe[1:]]
    ok = subprocess.run(command, env={"BATCHSERVE_PORT": str(health_server)}, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    # $PORT is the fallback when BATCHSERVE_PORT is unset (Cloud Run).
    assert subprocess.run(command, env={"PORT": str(health_server)}, capture_output=True, timeout=30).returncode == 0
    down = subprocess.run(command, env={"BATCHSERVE_PORT": str(unused_port())}, capture_output=True, timeout=30)
    assert down.returncode != 0


def unused_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", ".git", "tests", "deploy-out", "batchserve-events.sqlite3*", "model_repo/models/*/[0-9]*"):
        assert needed in patterns, needed
