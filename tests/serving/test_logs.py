"""The JSON log lines: the field names Cloud Logging lifts into the entry (severity, message, time),
the request id, exceptions, and the set-up that installs them."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest

from batchserve.serving import logs
from batchserve.serving.logs import JsonFormatter, current_request_id, setup_logging, severity

# Cloud Logging's LogSeverity names (google.logging.type.LogSeverity).
CLOUD_LOGGING_SEVERITIES = {"DEFAULT", "DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL", "ALERT", "EMERGENCY"}


def record(level: int, message: str = "hello %s", args: tuple[object, ...] = ("world",), **extra: object,
           ) -> logging.LogRecord:
    item = logging.LogRecord("batchserve.test", level, __file__, 1, message, args, None)
    item.__dict__.update(extra)
    return item


@pytest.mark.parametrize(("level", "expected"), [
    (logging.DEBUG, "DEBUG"), (logging.INFO, "INFO"), (logging.WARNING, "WARNING"),
    (logging.ERROR, "ERROR"), (logging.CRITICAL, "CRITICAL"),
    (5, "DEBUG"), (25, "INFO"), (45, "ERROR"), (60, "CRITICAL"),  # custom levels: the standard one below
])
def test_severity_uses_cloud_loggings_names(level: int, expected: str) -> None:
    assert severity(level) == expected
    assert expected in CLOUD_LOGGING_SEVERITIES


def test_a_line_carries_severity_message_time_and_request_id() -> None:
    line = JsonFormatter().format(record(logging.WARNING, request_id="req-7"))
    entry = json.loads(line)
    assert "\n" not in line  # one entry per line, as Cloud Run and CloudWatch split them
    assert entry["severity"] == "WARNING"
    assert "level" not in entry  # one name for the level, the one Cloud Logging reads
    assert entry["message"] == "hello world"
    assert entry["logger"] == "batchserve.test" and entry["request_id"] == "req-7"
    # RFC 3339 in UTC with milliseconds: Cloud Logging takes it as the entry's timestamp.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
    stamp = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
    assert abs(stamp - record(logging.INFO).created) < 5


def test_exceptions_and_non_ascii_stay_in_one_json_line() -> None:
    try:
        raise ValueError("café ☕")
    except ValueError:
        item = record(logging.ERROR, "failed: %s", ("naïve",))
        item.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(item))
    assert entry["severity"] == "ERROR" and entry["message"] == "failed: naïve"
    assert entry["exception"].startswith("Traceback") and "ValueError: café ☕" in entry["exception"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_setup_logging_json_writes_severity_and_the_current_request(
        restore_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    setup_logging("info", "json")
    token = current_request_id.set("abc123")
    try:
        logging.getLogger("batchserve.test").error("model %s failed", "tiny")
        logging.getLogger("batchserve.test").debug("below the level: not written")
    finally:
        current_request_id.reset(token)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert (entry["severity"], entry["message"], entry["request_id"]) == ("ERROR", "model tiny failed", "abc123")
