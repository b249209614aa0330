"""Append-only spill journal: events the store could not take, kept on local disk until it can.

Segments are JSON-lines files (``segment-000000000001.jsonl``) written with msgspec and fsync'd
once per appended batch.  A process never appends to a segment it did not create: a segment
left by a crash may end in a torn line, and appending behind it would glue the next event to
the torn bytes.  The methods block (file I/O, fsync); the writer calls them in a thread.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import msgspec

from batchserve.events.errors import JournalError
from batchserve.events.model import Event

__all__ = ["BadLine", "Journal", "SegmentContents", "fsync_dir"]

log = logging.getLogger(__name__)

_SEGMENT_RE = re.compile(r"^segment-(\d{12})\.jsonl$")
_DEFAULT_SEGMENT_BYTES = 8 << 20


@dataclass(frozen=True)
class BadLine:
    """A line of a segment that holds no event: ``torn`` (the last write cut short) or ``corrupt``."""

    number: int
    kind: Literal["torn", "corrupt"]
    raw: bytes


@dataclass(frozen=True)
class SegmentContents:
    path: Path
    events: list[Event]
    bad_lines: list[BadLine]

    @property
    def skipped_lines(self) -> int:
        return len(self.bad_lines)


class Journal:
    """A directory of segments bounded by ``max_bytes`` in total.  Thread-safe."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = _DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Event)
        self._active: IO[bytes] | None = None
        self._active_path: Path | None = None
        self._active_bytes = 0
        self._sizes: dict[Path, int] = {}
        self._next_seq = 1
        self._total = 0
        self._lock_file: IO[bytes] | None = None
        self._take_ownership()
        self._scan()

    def _take_ownership(self) -> None:
        """Hold an exclusive lock on the directory for this object's lifetime.

        Two processes sharing a journal would replay and delete each other's live segments;
        refusing the second one loudly beats losing events quietly.  The kernel drops the lock
        when the process dies, so a crash never leaves the directory locked.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock_file = open(self.directory / ".lock", "a+b")  # noqa: SIM115 - held for the lifetime
        except OSError as exc:
            # Spills will fail too and be counted; the store may still take every event.
            log.error("cannot use the event journal directory %s: %s", self.directory, exc)
            return
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise JournalError(
                f"the event journal {self.directory} is in use by another process: "
                "give each server process its own journal directory"
            ) from None
        self._lock_file = lock_file

    def _scan(self) -> None:
        if not self.directory.exists():
            return
        for path in self.directory.iterdir():
            match = _SEGMENT_RE.match(path.name)
            if match:
                self._set_size(path, path.stat().st_size)
                self._next_seq = max(self._next_seq, int(match[1]) + 1)

    # Read without the lock on purpose: the event loop asks for these, and the lock can be held
    # for the length of an fsync.  Single reads of an int or a dict's length are atomic.
    @property
    def size_bytes(self) -> int:
        return self._total

    @property
    def segment_count(self) -> int:
        return len(self._sizes)

    def _set_size(self, path: Path, size: int) -> None:
        self._total += size - self._sizes.get(path, 0)
        self._sizes[path] = size

    def append(self, events: Sequence[Event]) -> int:
        """Write as many of ``events`` as fit under ``max_bytes``, durably; returns how many.

        The caller counts the rest as dropped.  Raises ``JournalError`` when the disk refuses
        (nothing from this call is then guaranteed on disk).
        """
        if not events:
            return 0
        with self._lock:
            lines = lines_within(self._encoder, events, self.max_bytes - self._total)
            if not lines:
                return 0
            try:
                self._write(b"".join(lines))
            except OSError as exc:
                # The segment may now end torn: seal it so the next append starts clean.
                self._seal()
                raise JournalError(f"cannot write the event journal in {self.directory}: {exc}") from exc
            return len(lines)

    def _write(self, data: bytes) -> None:
        if self._active is None or self._active_bytes >= self.segment_bytes:
            self._seal()
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"segment-{self._next_seq:012d}.jsonl"
            self._next_seq += 1
            self._active = open(path, "xb")  # noqa: SIM115 - held open across appends
            self._active_path = path
            self._active_bytes = 0
            self._set_size(path, 0)
            fsync_dir(self.directory)  # the new name must survive a crash too
        assert self._active_path is not None
        self._active.write(data)
        self._active.flush()
        os.fsync(self._active.fileno())
        self._active_bytes += len(data)
        self._set_size(self._active_path, self._active_bytes)

    def _seal(self) -> None:
        if self._active is not None:
            try:
                self._active.close()
            except OSError as exc:
                log.warning("closing journal segment %s failed: %s", self._active_path, exc)
            if self._active_path is not None and self._active_path.exists():
                self._set_size(self._active_path, self._active_path.stat().st_size)
        self._active = None
        self._active_path = None
        self._active_bytes = 0

    def sealed_segments(self) -> list[Path]:
        """Every segment in write order, after sealing the active one (appends go to a new one)."""
        with self._lock:
            self._seal()
            return sorted(self._sizes)

    def read(self, path: Path) -> SegmentContents:
        """The events of a sealed segment, and the lines that hold none (logged; the caller accounts for them)."""
        data = path.read_bytes()
        events: list[Event] = []
        bad: list[BadLine] = []
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            # No newline after the last line: its write may not have finished.  A JSON object
            # cut anywhere but right before the newline does not parse, so one that parses is whole.
            torn_tail = number == len(lines)
            event = self._decode(line)
            if event is None:
                bad.append(BadLine(number, "torn" if torn_tail else "corrupt", line))
                log.warning(
                    "journal %s line %d is %s; set aside",
                    path.name,
                    number,
                    "torn (incomplete last write)" if torn_tail else "not a valid event",
                )
                continue
            events.append(event)
        return SegmentContents(path, events, bad)

    def _decode(self, line: bytes) -> Event | None:
        try:
            return self._decoder.decode(line)
        except msgspec.ValidationError:
            # A field of the wrong type (a caller's bug) must not cost the whole event: keep it
            # as written; the store's sanitiser turns what does not fit into NULL.
            return _lenient_event(line)
        except msgspec.DecodeError:
            return None

    def remove(self, path: Path) -> None:
        with self._lock:
            if path == self._active_path:
                raise JournalError(f"{path} is the active segment; seal it before removing it")
            path.unlink(missing_ok=True)
            self._total -= self._sizes.pop(path, 0)

    def close(self) -> None:
        """Seal the active segment and release the directory."""
        with self._lock:
            self._seal()
            if self._lock_file is not None:
                self._lock_file.close()  # closing the descriptor releases the flock
                self._lock_file = None


def _lenient_event(line: bytes) -> Event | None:
    try:
        raw: Any = msgspec.json.decode(line)
        if not isinstance(raw, dict):
            return None
        fields = {k: raw[k] for k in Event.__struct_fields__ if k in raw}
        ts = fields.get("ts")
        if isinstance(ts, str):
            fields["ts"] = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        return Event(**fields)
    except (msgspec.DecodeError, TypeError, ValueError):
        return None


def lines_within(encoder: msgspec.json.Encoder, records: Sequence[Any], room: int) -> list[bytes]:
    """The leading records as JSON lines, as many as fit in `room` bytes (a file's cap)."""
    lines: list[bytes] = []
    used = 0
    for record in records:
        line = encoder.encode(record) + b"\n"
        if used + len(line) > room:
            break
        lines.append(line)
        used += len(line)
    return lines


def fsync_dir(directory: Path) -> None:
    """Make a new name in ``directory`` survive a crash (best effort where the filesystem cannot)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync directories; the file's own fsync still holds
    finally:
        os.close(fd)
