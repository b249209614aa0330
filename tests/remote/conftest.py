"""Real processes for the remote backend: upstreams (`--no-events`) and web tiers in front of them.

One set per test session, started in parallel (each process spends seconds importing): the real
model, two fast simulated upstreams (one under `--auth required`), a simulated one that admits one
request at a time, a web tier forwarding to all four with the right key, and one with a wrong key;
and a fast simulated upstream serving HTTPS with a self-signed certificate made here.
The tests that kill upstreams run last (test_remote_faults.py).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import ipaddress
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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
    tls: ServerProcess  # a fast simulated upstream on HTTPS (its `url` is https://)
    tls_cert: Path  # its self-signed certificate, the only one that trusts it


def start_all(starters: list[Callable[[], object]]) -> None:
    """Run the starters side by side."""
    with concurrent.futures.ThreadPoolExecutor(len(starters)) as pool:
        for future in [pool.submit(start) for start in starters]:
            future.result()


def start_listening(process: ServerProcess, timeout: float = 90.0, *, path: str = "/healthz",
                    verify: ssl.SSLContext | bool = True) -> None:
    """Start a server and return once `path` answers 200 (/healthz: it listens, ready or not)."""
    process.cwd.mkdir(parents=True, exist_ok=True)
    with process.log_path.open("wb") as log:
        process._process = subprocess.Popen(  # the same child ServerProcess.start makes
            serve_command(process.python, process.port, process.args), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=process.cwd, env=process.env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{process.log_tail()}")
        try:
            if httpx.get(process.url + path, timeout=1.0, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer {path} within {timeout:.0f} s:\n{process.log_tail()}")


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key: (certificate, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batchserve test upstream")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "upstream.crt", folder / "upstream.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


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
    cert, key = self_signed(cwd / "tls")
    tls = ServerProcess(*FAST_SIM, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), cwd=cwd / "tls")
    tls.url = tls.url.replace("http://", "https://")
    try:
        start_all([*(u.start for u in upstreams),
                   lambda: start_listening(tls, path="/readyz", verify=trusting(cert))])
        start_all([web.start, lambda: start_listening(wrong)])
        yield Cluster(real, fast_a, fast_b, tight, web, wrong, web_events=cwd / "web" / "events.sqlite3", tls=tls,
                      tls_cert=cert)
    finally:
        for process in (web, wrong, *upstreams, tls):
            process.stop(timeout=10)
