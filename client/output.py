"""Where `batchserve classify` writes its results: JSON Lines or CSV, one record as each arrives.

Every record is written whole and flushed at once, so a run that is killed keeps every result it
got, and `--resume` can read them back: the paths recorded with status `ok` are not sent again
(failed ones are), and new records are appended. A last line cut short by the kill is dropped
before appending, so the file stays well-formed.

JSON Lines holds one object per image (see :meth:`Result.record`). CSV holds one row per
prediction, best first (`--top-k 1` gives one row per image); a failed image is one row whose error
columns are filled.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

__all__ = [
    "CSV_COLUMNS", "BadOutput", "CsvWriter", "JsonlWriter", "Result", "ResultWriter", "open_output", "output_format",
]

CSV_COLUMNS = ("path", "status", "label", "score", "class_id", "error_code", "error_message")
OK = "ok"
FAILED = "failed"


class BadOutput(ValueError):
    """--out cannot be used: an unknown extension, or --resume on a file that holds no results."""


@dataclass
class Result:
    """One image's outcome, from a direct answer or a job's result."""

    path: str
    ok: bool
    request_id: str | None = None
    model: str | None = None
    model_version: Any = None
    predictions: list[dict[str, Any]] | None = None
    error_code: str | None = None
    error_message: str | None = None
    timing_ms: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # attempts, elapsed_ms, http_status, job_id, ...

    @property
    def status(self) -> str:
        return OK if self.ok else FAILED

    def record(self) -> dict[str, Any]:
        """The JSON Lines object: path, status, request_id, model, model_version, then predictions or
        error {code, message}, timing_ms (the server's), and what the client knows (attempts, ...)."""
        record: dict[str, Any] = {"path": self.path, "status": self.status, "request_id": self.request_id,
                                  "model": self.model, "model_version": self.model_version}
        if self.ok:
            record["predictions"] = self.predictions or []
        else:
            record["error"] = {"code": self.error_code, "message": self.error_message}
        if self.timing_ms is not None:
            record["timing_ms"] = self.timing_ms
        record.update(self.extra)
        return record

    def rows(self) -> list[tuple[Any, ...]]:
        """The CSV rows, in CSV_COLUMNS order."""
        if not self.ok:
            return [(self.path, self.status, "", "", "", self.error_code or "", self.error_message or "")]
        return [(self.path, self.status, p.get("label", ""), p.get("score", ""), p.get("class_id", ""), "", "")
                for p in self.predictions or [{}]]


class ResultWriter(Protocol):
    def write(self, result: Result) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    def __init__(self, stream: TextIO, *, owned: bool) -> None:
        self.stream, self.owned = stream, owned

    def write(self, result: Result) -> None:
        self.stream.write(json.dumps(result.record(), ensure_ascii=False) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.owned:
            self.stream.close()


class CsvWriter:
    def __init__(self, stream: TextIO, *, owned: bool, header: bool) -> None:
        self.stream, self.owned = stream, owned
        if header:
            self.stream.write(_csv_line(CSV_COLUMNS))
            self.stream.flush()

    def write(self, result: Result) -> None:
        # One write call per image: a kill leaves whole images, never half of one's rows.
        self.stream.write("".join(_csv_line(row) for row in result.rows()))
        self.stream.flush()

    def close(self) -> None:
        if self.owned:
            self.stream.close()


def _csv_line(row: tuple[Any, ...]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue()


def output_format(path: str) -> str:
    """`jsonl` or `csv`, from --out's extension."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".jsonl":
        return "jsonl"
    if extension == ".csv":
        return "csv"
    raise BadOutput(f"--out {path}: unknown extension {extension or '(none)'!r}; use .jsonl or .csv")


def open_output(path: str | None, *, resume: bool) -> tuple[ResultWriter, set[str]]:
    """The writer, and the paths already classified successfully (read from --out with --resume).

    Without --out, JSON Lines go to stdout. Raises BadOutput, or OSError when the file cannot be opened.
    """
    if path is None:
        if resume:
            raise BadOutput("--resume reads the results of an earlier run from --out: give --out")
        return JsonlWriter(sys.stdout, owned=False), set()
    kind = output_format(path)
    done: set[str] = set()
    appending = resume and os.path.exists(path) and os.path.getsize(path) > 0
    if appending:
        _drop_cut_line(path)
        with open(path, encoding="utf-8", newline="") as existing:
            done = read_done_csv(existing, path) if kind == "csv" else read_done_jsonl(existing, path)
    stream = open(path, "a" if appending else "w", encoding="utf-8", newline="")  # noqa: SIM115 - the writer owns it
    if kind == "csv":
        return CsvWriter(stream, owned=True, header=not appending or os.path.getsize(path) == 0), done
    return JsonlWriter(stream, owned=True), done


def _drop_cut_line(path: str) -> None:
    """Truncate a last line without its newline: the record a killed run was writing."""
    with open(path, "rb+") as file:
        data = file.read()
        if data and not data.endswith(b"\n"):
            file.truncate(data.rfind(b"\n") + 1)


def read_done_jsonl(stream: TextIO, path: str) -> set[str]:
    done: set[str] = set()
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str) or "status" not in record:
            raise BadOutput(f"--resume: {path} line {number} is not a result of batchserve classify")
        if record["status"] == OK:
            done.add(record["path"])
    return done


def read_done_csv(stream: TextIO, path: str) -> set[str]:
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is not None and tuple(header) != CSV_COLUMNS:
        raise BadOutput(f"--resume: {path} does not start with the header {','.join(CSV_COLUMNS)}")
    return {row[0] for row in reader if len(row) == len(CSV_COLUMNS) and row[1] == OK}
