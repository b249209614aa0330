"""Authentication with real server processes over real sockets: replicas sharing a real Redis,
the shipped clients with `--api-key`, the private metrics listener, TLS, and a key that never
shows up in anything the server writes."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import re
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from batchserve.loadtest.server_process import ServerProcess, free_port
from batchserve.server.auth.keys import key_digest
from tests.server.conftest import jpeg_bytes
from tests.server.keyring import MadeKey, add_key, bearer, redis_or_skip, unique

pytestmark = pytest.mark.slow
BOOTSTRAP = "bootstrap-admin-key-for-tests-7f3a"


def tiny_server(cwd: Path, *args: str, env: dict[str, str] | None = None, journal: str = "journal") -> ServerProcess:
    """The tiny model, events (and keys) in cwd/events.sqlite3; each process needs its own journal."""
    return ServerProcess("--models", "tiny", "--events-path", str(cwd / "events.sqlite3"), "--journal-dir",
                         str(cwd / journal), "--events-flush-interval-ms", "50", *args, cwd=cwd, env=env)


@dataclass
class Locked:
    server: ServerProcess
    cwd: Path
    metrics_port: int
    classify: MadeKey
    stats: MadeKey
    admin: MadeKey
    limited: MadeKey


@pytest.fixture(scope="module")
def locked(built_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Locked]:
    """`--auth required` with model control, the private metrics port, access logs and debug logging."""
    cwd = tmp_path_factory.mktemp("locked-server")
    db = cwd / "events.sqlite3"

    async def keys() -> tuple[MadeKey, ...]:
        return (await add_key(db, "classifier", ("classify",)), await add_key(db, "analyst", ("stats",)),
                await add_key(db, "operator", ("admin",)),
                await add_key(db, unique("limited"), ("classify",), rate=1 / 3600, burst=2))

    classify, stats, admin, limited = asyncio.run(keys())
    metrics_port = free_port()
    server = tiny_server(cwd, "--auth", "required", "--model-control", "explicit", "--metrics-port", str(metrics_port),
                         "--access-log", "--log-level", "debug", env={"BATCHSERVE_ADMIN_KEY": BOOTSTRAP})
    with server:
        yield Locked(server, cwd, metrics_port, classify, stats, admin, limited)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSERVE_")} | (env or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180, check=False,
                          env=environ)


def test_two_servers_sharing_redis_enforce_one_budget(built_models: Path, tmp_path: Path) -> None:
    redis_url = redis_or_skip()
    shared = asyncio.run(add_key(tmp_path / "events.sqlite3", unique("replicated"), ("classify",), rate=1 / 3600,
                                 burst=6))
    one = tiny_server(tmp_path, "--auth", "required", "--redis-url", redis_url, journal="journal-1")
    two = tiny_server(tmp_path, "--auth", "required", "--redis-url", redis_url, journal="journal-2")
    with one, two:
        statuses = [httpx.get(f"{(one, two)[i % 2].url}/v1/models", headers=bearer(shared.key), timeout=30).status_code
                    for i in range(12)]
        limited = httpx.get(f"{one.url}/v1/models", headers=bearer(shared.key), timeout=30)
    assert statuses.count(200) == 6 and statuses.count(429) == 6, statuses
    assert statuses[:6] == [200] * 6  # both replicas drew on the one bucket
    assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["Retry-After"]) > 3000


def test_the_shipped_clients_send_api_key(locked: Locked) -> None:
    url = locked.server.url
    workload = [sys.executable, "-m", "batchserve.loadtest.workload", "--url", url, "--model", "tiny", "-n", "3"]
    without = run(*workload[1:])
    with_flag = run(*workload[1:], "--api-key", locked.classify.key)
    with_env = run(*workload[1:], env={"BATCHSERVE_API_KEY": locked.classify.key})
    assert "failed: 3" in without.stdout and "HTTP 401" in without.stdout
    assert "completed: 3" in with_flag.stdout, with_flag.stdout + with_flag.stderr
    assert "completed: 3" in with_env.stdout

    stats = ["-m", "batchserve", "stats", "--url", url, "--json"]
    assert run(*stats, "--api-key", locked.stats.key).returncode == 0
    refused = run(*stats, "--api-key", locked.classify.key)
    assert refused.returncode == 1 and "403" in refused.stderr and "stats" in refused.stderr

    control = ["-m", "batchserve", "models"]
    loaded = run(*control, "load", "tiny", "--url", url, "--api-key", locked.admin.key)
    assert loaded.returncode == 0 and "tiny: READY" in loaded.stdout, loaded.stderr
    by_alias = run(*control, "load", "tiny", "--url", url, env={"BATCHSERVE_ADMIN_KEY": BOOTSTRAP})
    assert by_alias.returncode == 0, by_alias.stderr
    forbidden = run(*control, "unload", "tiny", "--url", url, "--api-key", locked.classify.key)
    assert forbidden.returncode == 1 and "HTTP 403" in forbidden.stderr
    missing = run(*control, "unload", "tiny", "--url", url)
    assert missing.returncode == 1 and "HTTP 401" in missing.stderr


def test_loadtest_sends_the_key(locked: Locked, tmp_path: Path) -> None:
    targets = tmp_path / "targets.toml"
    targets.write_text('[auth]\nusers = 2\nspawn_rate = 2\nduration = "3s"\nmodel = "tiny"\n'
                       "[auth.targets]\nmin_rps = 0.1\nmax_failure_ratio = 0.0\n")
    command = ["-m", "batchserve", "loadtest", "--url", locked.server.url, "--profile", "auth", "--targets",
               str(targets)]
    passed = run(*command, "--out", str(tmp_path / "with"), "--api-key", locked.classify.key)
    assert passed.returncode == 0 and "failures 0" in passed.stdout, passed.stdout + passed.stderr
    failed = run(*command, "--out", str(tmp_path / "without"))
    assert failed.returncode == 1 and "failure" in failed.stdout


def test_tritonclient_sends_the_key_in_headers(locked: Locked) -> None:
    client = triton.InferenceServerClient(url=f"127.0.0.1:{locked.server.port}", network_timeout=60.0)
    admin, classify = bearer(locked.admin.key), bearer(locked.classify.key)
    assert client.is_server_live() and client.is_server_ready()  # health needs no key
    with pytest.raises(InferenceServerException, match="API key"):
        client.get_model_metadata("tiny")
    assert client.get_model_metadata("tiny", headers=classify)["name"] == "tiny"
    with pytest.raises(InferenceServerException, match="admin"):
        client.load_model("tiny", headers=classify)
    client.unload_model("tiny", headers=admin)
    assert not client.is_model_ready("tiny", headers=classify)
    client.load_model("tiny", headers=admin)
    assert client.is_model_ready("tiny", headers=classify)
    tensor = triton.InferInput("input", [1, 3, 224, 224], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float32))
    result = client.infer("tiny", [tensor], headers=classify)
    assert result.as_numpy("logits").shape == (1, 1000)


def test_metrics_are_open_on_the_metrics_port_only(locked: Locked) -> None:
    private = f"http://127.0.0.1:{locked.metrics_port}"
    scrape = httpx.get(f"{private}/metrics", timeout=30)
    assert scrape.status_code == 200 and "batchserve_http_requests_total" in scrape.text
    assert "batchserve_api_keys " in scrape.text
    assert httpx.get(f"{private}/v1/models", timeout=30).status_code == 404
    assert httpx.post(f"{private}/metrics", timeout=30).status_code == 405
    api = f"{locked.server.url}/metrics"
    assert httpx.get(api, timeout=30).status_code == 401
    assert httpx.get(api, headers=bearer(locked.classify.key), timeout=30).status_code == 403
    assert httpx.get(api, headers=bearer(locked.stats.key), timeout=30).status_code == 200


def test_the_key_never_appears_in_logs_events_or_metrics(locked: Locked) -> None:
    url, keys = locked.server.url, locked
    made_up = "bsk_madeUpKeyThatNobodyHas_000000000000000000000"
    with httpx.Client(base_url=url, timeout=30) as client:
        for key in (keys.classify.key, keys.limited.key, made_up):
            for headers in (bearer(key), {"X-API-Key": key}, {"X-Admin-Key": key}):
                client.post("/v1/classify?model=tiny", content=jpeg_bytes(), headers=headers)
                client.post("/v1/classify?model=tiny", content=b"not an image", headers=headers)
                client.get("/v1/stats", headers=headers)
                client.get("/v1/no-such-route", headers=headers)
        client.post("/v2/repository/models/tiny/load", headers=bearer(keys.admin.key))
        client.post("/v2/repository/models/tiny/load", headers=bearer(BOOTSTRAP))
        limited = client.get("/v1/models", headers=bearer(keys.limited.key))
        assert limited.status_code == 429
        seen = [client.get("/metrics", headers=bearer(keys.stats.key)).text,
                httpx.get(f"http://127.0.0.1:{locked.metrics_port}/metrics", timeout=30).text]

    async def flushed() -> None:
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            with sqlite3.connect(locked.cwd / "events.sqlite3") as con:
                users = {r[0] for r in con.execute("SELECT DISTINCT user_name FROM user_dim")}
            if {"classifier", keys.limited.name, "key-" + key_digest(made_up)[:16]} <= users:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"events not written: {users}")

    asyncio.run(flushed())
    log = locked.server.log()
    assert "loading tiny (model control, key operator)" in log and "key admin-key" in log
    assert '"GET /v1/stats HTTP/1.1" 403' in log  # --access-log lines are part of what is searched
    # Everything the server wrote: its log, the events database (WAL included), the journal.
    written = [path.read_bytes() for path in locked.cwd.rglob("*") if path.is_file()]
    for secret in (keys.classify.key, keys.limited.key, keys.stats.key, keys.admin.key, BOOTSTRAP, made_up):
        encoded = secret.encode()
        assert not any(encoded in blob for blob in written), f"a key was written to disk: {secret[:8]}…"
        assert all(secret not in text for text in seen), "a key is in the metrics"
        assert secret not in log and key_digest(secret) not in log
        assert all(key_digest(secret) not in text for text in seen)


def self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_a_self_signed_certificate(built_models: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    alice = asyncio.run(add_key(tmp_path / "events.sqlite3", "alice", ("classify",)))
    server = tiny_server(tmp_path, "--auth", "required", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    server.url = f"https://127.0.0.1:{server.port}"
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the readiness poll trusts this certificate, nothing more
    with server:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as client:
            assert client.get(f"{server.url}/healthz").status_code == 200
            models = client.get(f"{server.url}/v1/models", headers=bearer(alice.key))
            assert models.status_code == 200 and models.json()["models"][0]["name"] == "tiny"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10)  # no plain HTTP on that port
    assert "listening on https://" in server.log()


@pytest.mark.parametrize("args, message", [
    (["--model-control", "explicit"], "--model-control explicit needs an admin key"),
    (["--ssl-certfile", "cert.pem"], "ssl_certfile and ssl_keyfile go together"),
    (["--auth", "sometimes"], "invalid choice"),
])
def test_unsafe_or_incomplete_settings_refuse_to_start(tmp_path: Path, args: list[str], message: str) -> None:
    result = run("-m", "batchserve", "serve", "--port", str(free_port()), *args)
    assert result.returncode == 2 and message in result.stderr


def test_a_broken_certificate_is_a_clear_start_error(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    result = run("-m", "batchserve", "serve", "--models", "tiny", "--port", str(free_port()), "--no-events",
                 "--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile", str(tmp_path / "key.pem"))
    assert result.returncode == 1 and "cannot serve HTTPS" in result.stderr
    assert re.search(r"Traceback", result.stderr) is None
