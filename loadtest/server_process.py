"""Run `batchserve serve` as a child process on a free local port, for benchmarks and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message carries its log's tail."""


def free_port() -> int:
    """A port the kernel just handed out; free again once the socket closes. Another process could
    take it in between, which start() then reports as an early exit rather than hanging."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The server is local: never route these probes through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"the server exited with status {self.process.returncode} before it was ready:\n{self.log_tail()}"
                )
            if http_status(self.url + "/readyz", timeout=1.0) == 200:
                return
            time.sleep(0.1)
        raise ServerStartError(f"the server was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (the server drains and exits), then SIGKILL if it overstays."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return int(self.process.returncode)


def serve_command(port: int, args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "batchserve", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--drain-delay", "0", *args]


def start_server(args: Sequence[str], *, log_dir: Path | None = None, ready_timeout: float = 90.0,
                 env: dict[str, str] | None = None) -> ServerProcess:
    """Start `batchserve serve <args>` on a free port and wait until /readyz answers 200."""
    port = free_port()
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="batchserve-server-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    repo_root = Path(__file__).resolve().parent.parent
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            serve_command(port, args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=repo_root, env={**os.environ, **(env or {})},
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        server.wait_ready(ready_timeout)
    except BaseException:
        server.stop(timeout=5)
        raise
    return server


@contextmanager
def running_server(args: Sequence[str], **kwargs: object) -> Iterator[ServerProcess]:
    server = start_server(args, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
