"""A local S3 + SQS for queue-mode measurements: moto's server in a child process on 127.0.0.1.

moto ships with the development extras only (`pip install 'moto[server]'`); `MotoServer.start`
says so when it is missing instead of failing with an import error in the child.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path

from batchserve.loadtest.server_process import ServerStartError, free_port

MOTO_START_TIMEOUT_S = 30.0
# Credentials moto accepts: any will do, but botocore insists on some.
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServer:
    """`python -m moto.server` on a free loopback port; `start()` returns once it accepts connections."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("moto has not been started")
        return self._process.pid

    def environment(self) -> dict[str, str]:
        """What a client or child process needs in its environment to use this server."""
        return {**MOTO_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, timeout: float = MOTO_START_TIMEOUT_S) -> MotoServer:
        if importlib.util.find_spec("moto") is None:
            raise ServerStartError("moto is not installed; queue-mode measurements need it: "
                                   "pip install 'moto[server]'")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerStartError(f"moto exited with {self._process.returncode}:\n{self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerStartError(f"moto did not listen on port {self.port} within {timeout:.0f} s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
