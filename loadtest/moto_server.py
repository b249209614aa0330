"""A local S3 + SQS for queue-mode measurements: moto's server in a child process on 127.0.0.1.

moto ships with the development extras only (`pip install 'moto[server]'`); `MotoServer.start`
says so when it is missing instead of failing with an import error in the child.

A measurement that must tell moto's CPU from its own pins moto to some CPUs (`cpus`) once it
listens: every thread of it runs there, those it starts later too.

The server runs as `python -m batchserve.loadtest.moto_server HOST PORT`: moto's application as
`python -m moto.server` serves it, with two differences that make moto cost more like S3 and SQS
and less like a test double, so that what a client measures is its own cost:
- **Keep-alive connections.** moto's own server (werkzeug's) answers every request with
  `Connection: close`, so each call opens a new connection (and moto a new thread); here uvicorn
  serves the same application and keeps connections open, as S3 and SQS do.
- **A receive in linear time.** moto checks the retention of every message a receive returns by
  computing every attribute of its queue, three times over, each a pass over all of the queue's
  messages; a receive from a backlog of n messages then costs O(n^2), and a worker draining a
  backlog would measure moto's receive instead of itself. Here the check reads the retention period
  alone; what it decides is the same.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

from batchserve.loadtest.server_process import ServerStartError, free_port

MOTO_START_TIMEOUT_S = 30.0
# Requests moto works on at once: a long poll holds one for its whole wait, and the bench's tiers keep
# a dozen waiting.
MOTO_THREADS = 64
# As S3 and SQS do, connections stay open between requests (uvicorn closes one idle this long).
KEEP_ALIVE_S = 60
# Credentials moto accepts: any will do, but botocore insists on some.
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServer:
    """`python -m moto.server` on a free loopback port; `start()` returns once it accepts connections."""

    def __init__(self, log_path: Path, port: int | None = None, cpus: Collection[int] | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.cpus = cpus
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
                [sys.executable, "-m", "batchserve.loadtest.moto_server", "127.0.0.1", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ServerStartError(f"moto exited with {self._process.returncode}:\n{self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                if self.cpus is not None:  # its threads, and those they start later
                    pin_process(self._process.pid, self.cpus)
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
        """Killed at once: moto keeps nothing worth a clean exit, and one asked to stop would wait for
        the long polls still parked in its threads (up to 20 s each)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(timeout=5)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def pin_process(pid: int, cpus: Collection[int]) -> None:
    """Every thread of process `pid` onto `cpus` (threads it starts later inherit their starter's)."""
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            continue


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:  # no /proc (not Linux), or the process is gone: its main thread alone
        return [pid]


def retention_check_in_constant_time() -> None:
    """moto's per-message retention check, without computing every attribute of the queue (see above)."""
    from moto.core.utils import unix_time
    from moto.sqs.models import Message, SQSBackend

    def is_message_valid_based_on_retention_period(self: SQSBackend, queue_name: str, message: Message) -> bool:
        # moto sets each queue attribute from the queue's settings: mypy sees no such attribute.
        retention_s = int(self.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
        return retention_s + (message.sent_timestamp or 0) / 1000 > unix_time()

    SQSBackend.is_message_valid_based_on_retention_period = (  # type: ignore[method-assign]
        is_message_valid_based_on_retention_period)


def main(argv: list[str] | None = None) -> None:
    """`python -m batchserve.loadtest.moto_server HOST PORT`: moto's app behind uvicorn, with the
    retention check above."""
    import argparse
    import warnings

    import uvicorn
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from uvicorn.middleware.wsgi import WSGIMiddleware

    parser = argparse.ArgumentParser(prog="python -m batchserve.loadtest.moto_server")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    retention_check_in_constant_time()
    warnings.simplefilter("ignore", DeprecationWarning)  # uvicorn's WSGI adapter says it is deprecated
    app = WSGIMiddleware(DomainDispatcherApplication(create_backend_app), workers=MOTO_THREADS)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                timeout_keep_alive=KEEP_ALIVE_S)


if __name__ == "__main__":
    main()
