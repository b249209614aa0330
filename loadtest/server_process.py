"""Run `batchserve serve` as a child process on a free loopback port, for benchmarks and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from batchserve.client.http import HttpError, request_json


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message carries its log's tail."""


def free_port() -> int:
    """A port the kernel just handed out; free again once the socket closes. Another process could
    take it in between, which start() then reports as an early exit rather than hanging."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(python: str, port: int, args: Sequence[str]) -> list[str]:
    # No drain delay unless the caller asks for one (a later flag wins): nothing balances load in
    # front of a child process, so waiting for it to move away only slows every stop down.
    return [python, "-m", "batchserve", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--drain-delay", "0", *args]


class ServerProcess:
    """One `batchserve serve ARGS` child. `start()` (or `with`) returns once /readyz answers 200.

    The child runs in `cwd` (a new temporary directory by default), where relative paths in its
    defaults land (the SQLite events file, the journal) and where its output goes to
    `server-<port>.log`; never the source checkout, which an installed server does not have.
    `python` is the interpreter whose batchserve serves (this one unless, say, another environment's).
    """

    def __init__(self, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 ready_timeout: float = 90.0, python: str = sys.executable) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args)
        # The child gets --port; a PORT from the environment (Cloud Run's way to say it) is not for it.
        self.env = {k: v for k, v in os.environ.items() if k != "PORT"} | dict(env or {})
        self.cwd = Path(cwd) if cwd is not None else Path(tempfile.mkdtemp(prefix="batchserve-server-"))
        self.log_path = self.cwd / f"server-{self.port}.log"
        self.ready_timeout = ready_timeout
        self.python = python
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the server has not been started")
        return self._process

    def launch(self) -> ServerProcess:
        """Start the child without waiting for it (see `wait_ready`)."""
        self.cwd.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                serve_command(self.python, self.port, self.args), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=self.cwd, env=self.env,
            )
        return self

    def start(self, timeout: float | None = None) -> ServerProcess:
        """Start the child and wait until it is ready; on failure it is stopped and ServerStartError raised."""
        self.launch()
        try:
            self.wait_ready(self.ready_timeout if timeout is None else timeout)
        except BaseException:
            self.stop(timeout=5)
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"the server exited with status {self.process.returncode} before it was ready:\n{self.log_tail()}"
                )
            try:
                request_json(self.url + "/readyz", timeout=1.0)
                return
            except HttpError:  # not listening yet, or 503 while the models warm up
                time.sleep(0.1)
        raise ServerStartError(f"the server was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the server drains and exits), then SIGKILL if it overstays; the exit status, or
        None when it never started."""
        if self._process is None:
            return None
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        return int(self._process.returncode)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(args: Sequence[str], *, log_dir: Path | None = None, ready_timeout: float = 90.0,
                 env: Mapping[str, str] | None = None) -> ServerProcess:
    """Start `batchserve serve <args>` in `log_dir` on a free port and wait until /readyz answers 200."""
    return ServerProcess(*args, env=env, cwd=log_dir, ready_timeout=ready_timeout).start()


def start_servers(arg_lists: Sequence[Sequence[str]], *, log_dir: Path | None = None,
                  ready_timeout: float = 90.0) -> list[ServerProcess]:
    """Start several servers at once (their imports and model loads overlap) and wait until all are
    ready; if one fails, all are stopped and ServerStartError raised."""
    servers = [ServerProcess(*args, cwd=log_dir, ready_timeout=ready_timeout).launch() for args in arg_lists]
    try:
        for server in servers:
            server.wait_ready(ready_timeout)
    except BaseException:
        stop_servers(servers, timeout=5)
        raise
    return servers


def stop_servers(servers: Sequence[ServerProcess], timeout: float = 20.0) -> None:
    """Stop the servers at once (each drains and exits on its own)."""
    if servers:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(lambda server: server.stop(timeout), servers))
