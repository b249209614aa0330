"""What the Kubernetes manifests assume of the server, the worker and the image, checked against them:
the containers' flags parse with the commands' own parsers into the intended settings, every
environment variable is one the command reads, the probes and the metric exist, and the numbers of
the shutdown sequence are the server's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from batchserve.cli import build_parser
from batchserve.deploy.k8s import contract
from batchserve.deploy.k8s.command import profile_from
from batchserve.deploy.k8s.render import build
from batchserve.jobs.config import ResourceNames, WorkerConfig
from batchserve.jobs.options import WORKER_OPTIONS, worker_settings
from batchserve.server.app import create_app
from batchserve.server.config import LifecycleConfig
from batchserve.server.options import OPTIONS, build_config, from_sources

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "ghcr.io/acme/batchserve:1.4.0"
KEYS = ["--admin-key-secret", "batchserve-keys", "--database-url-secret", "batchserve-db"]
DIRECT = ["--image", IMAGE, *KEYS, "--prometheus-url", "http://prometheus.monitoring.svc:9090"]
QUEUE = [
    "--mode",
    "queue",
    "--image",
    IMAGE,
    *KEYS,
    "--region",
    "eu-west-1",
    "--aws-account-id",
    "123456789012",
    "--aws-credentials-secret",
    "aws-keys",
    "--queue-name",
    "vision",
]
ADMIN_KEY = "bsk_test_admin_key_0123456789"


def documents(*argv: str) -> list[dict[str, Any]]:
    return build(profile_from(build_parser().parse_args(["deploy", "k8s", *argv])))


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    doc = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    return doc["spec"]["template"]["spec"]["containers"][0]


def environment(c: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would set it, with stand-ins for Secret values."""
    values = {"BATCHSERVE_DATABASE_URL": "postgresql://events@db.internal/events", "BATCHSERVE_ADMIN_KEY": ADMIN_KEY}
    return {e["name"]: e["value"] if "value" in e else values.get(e["name"], "from-a-secret") for e in c.get("env", [])}


def parsed(c: dict[str, Any]) -> dict[str, Any]:
    """The container's command line through `batchserve`'s own parser (what the image's entry point runs)."""
    assert c["command"][0] == "batchserve"
    args = build_parser().parse_args([*c["command"][1:], *c["args"]])
    return {k: v for k, v in vars(args).items() if k not in ("func", "command")}


def test_server_flags_and_environment_make_the_intended_config() -> None:
    server = container(documents(*DIRECT), "batchserve")
    config = from_sources(parsed(server), environ=environment(server))
    assert (config.listen.host, config.listen.port, config.listen.metrics_port) == (
        "0.0.0.0",
        contract.HTTP_PORT,
        contract.METRICS_PORT,
    )
    assert config.auth.auth == "required" and config.auth.admin_key == ADMIN_KEY
    assert config.events.database_url == "postgresql://events@db.internal/events"
    assert config.readiness.require_gpu is True
    assert (config.lifecycle.drain_delay, config.lifecycle.shutdown_grace) == (
        contract.DRAIN_DELAY_S,
        contract.SHUTDOWN_GRACE_S,
    )
    assert config.serving.models == ("efficientnet_lite0",)
    assert config.logging.log_format == "json"
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"http": config.listen.port, "metrics": config.listen.metrics_port}


def test_web_tier_and_worker_flags_make_the_intended_settings() -> None:
    docs = documents(*QUEUE, "--input-bucket", "acme-uploads")
    web = container(docs, "batchserve-web")
    config = from_sources(parsed(web), environ=environment(web))
    assert config.backend.backend == "queue"
    assert config.queue.names.requests == "vision-requests" and config.queue.input_bucket == "acme-uploads"
    assert config.readiness.require_gpu is False  # the web tier runs no model: the server refuses the flag there

    worker = container(docs, "batchserve-worker")
    settings = worker_settings(
        build_parser().parse_args([*worker["command"][1:], *worker["args"]]), environ=environment(worker)
    )
    assert settings.queue.queue_name == "vision" and settings.queue.region() == "eu-west-1"
    assert settings.queue.names.input_bucket == "acme-uploads"
    assert settings.worker.shutdown_grace_s == contract.WORKER_SHUTDOWN_GRACE_S
    assert settings.events.database_url == "postgresql://events@db.internal/events"


def test_every_batchserve_variable_is_one_the_command_reads() -> None:
    server_env = {o.env for o in OPTIONS}
    worker_env = {o.env for o in WORKER_OPTIONS}
    for docs in (documents(*DIRECT), documents(*QUEUE)):
        for doc in docs:
            if doc["kind"] != "Deployment":
                continue
            c = doc["spec"]["template"]["spec"]["containers"][0]
            known = worker_env if c["command"] == ["batchserve", "worker"] else server_env
            names = {e["name"] for e in c.get("env", []) if e["name"].startswith("BATCHSERVE_")}
            assert names and names <= known, names - known


def test_shutdown_numbers_are_the_servers_and_the_workers_defaults() -> None:
    lifecycle = LifecycleConfig()
    assert (lifecycle.drain_delay, lifecycle.shutdown_grace) == (contract.DRAIN_DELAY_S, contract.SHUTDOWN_GRACE_S)
    assert WorkerConfig().shutdown_grace_s == contract.WORKER_SHUTDOWN_GRACE_S
    assert ResourceNames.of("vision").requests == "vision" + contract.REQUESTS_QUEUE_SUFFIX


def test_image_user_and_working_directory_are_the_dockerfiles() -> None:
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    runtime = dockerfile[dockerfile.index("AS runtime") :]
    assert re.search(rf"^WORKDIR {re.escape(contract.WORK_DIR)}$", runtime, re.MULTILINE)
    assert re.search(rf"^USER {contract.IMAGE_UID}$", runtime, re.MULTILINE)
    assert f"HOME={contract.WORK_DIR}" in runtime  # caches under $HOME land on the same writable volume


async def test_probe_paths_answer_without_a_key_and_the_metric_is_exported(tmp_path: Path) -> None:
    """A real app under --auth required: the probes' paths answer without a key; /metrics on the main port
    needs one (hence the separate metrics port), and it exports the gauge the autoscalers read."""
    server = container(documents(*DIRECT), "batchserve")
    paths = {server[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert paths == {contract.READY_PATH, contract.LIVE_PATH}
    app = create_app(
        build_config(
            {
                "simulate_model": "5+1",
                "events": False,
                "auth": "required",
                "admin_key": ADMIN_KEY,
                "events_path": tmp_path / "events.sqlite3",
                "journal_dir": tmp_path / "journal",
            }
        )
    )
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert (await client.get(contract.LIVE_PATH)).status_code == 200
            ready = await client.get(contract.READY_PATH)
            assert ready.status_code == 200 and ready.json()["status"] == "ready"
            assert (await client.get(contract.METRICS_PATH)).status_code == 401
            scrape = await client.get(contract.METRICS_PATH, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert f"# TYPE {contract.QUEUE_DEPTH_METRIC} gauge" in scrape.text
    assert re.search(
        rf'^{contract.QUEUE_DEPTH_METRIC}{{model="simulated",version="1"}} 0\.0$', scrape.text, re.MULTILINE
    )


def test_autoscalers_read_the_exported_metric() -> None:
    scaled = next(d for d in documents(*DIRECT) if d["kind"] == "ScaledObject")
    assert re.search(rf"\b{contract.QUEUE_DEPTH_METRIC}\{{", scaled["spec"]["triggers"][0]["metadata"]["query"])
    hpa = next(
        d for d in documents("--image", IMAGE, *KEYS, "--autoscaler", "hpa") if d["kind"] == "HorizontalPodAutoscaler"
    )
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == contract.QUEUE_DEPTH_METRIC
