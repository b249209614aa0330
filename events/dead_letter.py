"""Events the store will never take, set aside with the reason beside the journal.

``<journal_dir>/dead-letter/<UTC start time>-<pid>.jsonl``, one JSON object per line::

    {"at": "...", "reason": "rejected", "detail": "...CheckViolationError...", "event": {...}}
    {"at": "...", "reason": "corrupt_line", "detail": "segment-000000000003.jsonl line 17", "line": "..."}

An event keeps every field as the journal would (after the PII policy); an unreadable journal
line is kept as text (bytes that are not UTF-8 as ``\\xNN``).  Each process appends to a file of its
own, fsync'd per batch, so a line torn by a crash never glues onto the next process's lines.
``jq -c 'select(.event) | .event'`` turns a file back into journal lines.  The directory shares the journal's lock;
the methods block, and the writer calls them on its journal thread.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import msgspec

from batchserve.events.errors import JournalError
from batchserve.events.journal import fsync_dir, lines_within
from batchserve.events.model import Event

__all__ = ["DeadLetter", "DeadRecord"]

DIRECTORY_NAME = "dead-letter"


class DeadRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    at: datetime
    reason: str
    detail: str
    event: Event | None = None
    line: str | None = None  # an unreadable journal line, as written

    @classmethod
    def of_event(cls, event: Event, reason: str, detail: str) -> DeadRecord:
        return cls(at=datetime.now(UTC), reason=reason, detail=detail, event=event)

    @classmethod
    def of_line(cls, raw: bytes, reason: str, detail: str) -> DeadRecord:
        return cls(at=datetime.now(UTC), reason=reason, detail=detail, line=raw.decode("utf-8", "backslashreplace"))


class DeadLetter:
    """``directory``'s dead-letter files, bounded by ``max_bytes`` in total.  Not thread-safe."""

    def __init__(self, journal_dir: Path, max_bytes: int) -> None:
        self.directory = Path(journal_dir) / DIRECTORY_NAME
        self.max_bytes = max_bytes
        self._encoder = msgspec.json.Encoder()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        try:
            self._total = sum(p.stat().st_size for p in self.directory.glob("*.jsonl"))
        except OSError:
            self._total = 0

    @property
    def size_bytes(self) -> int:
        return self._total

    @property
    def path(self) -> Path | None:
        """This process's file, once it has written one."""
        return self._path

    def append(self, records: Sequence[DeadRecord]) -> int:
        """Write as many of ``records`` as fit under ``max_bytes``, durably; returns how many.

        Raises ``JournalError`` when the disk refuses (nothing from this call is then guaranteed).
        """
        lines = lines_within(self._encoder, records, self.max_bytes - self._total)
        if not lines:
            return 0
        data = b"".join(lines)
        try:
            f = self._open()
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            self.close()  # the file may end torn now: the next append starts a new one
            raise JournalError(f"cannot write the dead-letter file in {self.directory}: {exc}") from exc
        self._total += len(data)
        return len(lines)

    def _open(self) -> IO[bytes]:
        if self._file is not None:
            return self._file
        self.directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for n in range(1000):
            path = self.directory / f"{stamp}-{os.getpid()}{f'-{n}' if n else ''}.jsonl"
            try:
                self._file = open(path, "xb")  # noqa: SIM115 - held open across appends
            except FileExistsError:
                continue
            self._path = path
            fsync_dir(self.directory)
            return self._file
        raise OSError(f"no free dead-letter file name in {self.directory}")

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # every line that counted was fsync'd already
                self._file.close()
            self._file = None
