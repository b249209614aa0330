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


def severity(levelno: int) -> str:
    """Cloud Logging's LogSeverity for a Python level. The standard levels carry the same names
    (WARNING, not WARN); a custom level takes the name of the standard one at or below it."""
    for floor, name in ((logging.CRITICAL, "CRITICAL"), (logging.ERROR, "ERROR"), (logging.WARNING, "WARNING"),
                        (logging.INFO, "INFO")):
        if levelno >= floor:
            return name
    return "DEBUG"


class JsonFormatter(logging.Formatter):
    """One JSON object per line. `severity`, `message` and `time` (RFC 3339) are the fields Cloud
    Logging lifts out of a line into the log entry itself, so Cloud Run's logs are filtered and
    coloured by level and dated when written, not when collected; CloudWatch Logs Insights and
    other shippers read the same names as ordinary fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "severity": severity(record.levelno),
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
