"""Logging set-up of every long-running command (the server, the queue worker): text for people,
JSON lines for log shippers; every line names the request it concerns."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterable

# Set by whatever front end handles a request (HTTP middleware, queue message handler).
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
QUIET_LOGGERS = ("aiobotocore", "botocore", "aioboto3", "urllib3")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text", *, quiet: Iterable[str] = ()) -> None:
    """One stderr handler for the whole process; `quiet` loggers (and the AWS SDK's) log warnings only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in (*QUIET_LOGGERS, *quiet):
        logging.getLogger(noisy).setLevel(logging.WARNING)
