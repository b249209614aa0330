"""What an event store backup looks like in the bucket: names, the manifest, the table encodings.

A backup is a folder ``PREFIX/<backup id>/`` holding one gzip object per table and
``manifest.json``, written last: a folder without a manifest is a backup that was interrupted (or
is still being written) and is never restored. The backup id is the UTC time the backup started,
``20240501T123456.789Z``, so ids sort in time order.

Table data keeps each database's own encoding, exact for every type it holds:
- PostgreSQL: ``COPY ... (FORMAT binary)`` of the listed columns, loaded back with ``COPY FROM``;
- SQLite: frames of MessagePack, each a 4-byte big-endian length and an array of rows (ints,
  floats, text, blobs and nulls survive as they are, which CSV would blur).
A backup therefore restores into the kind of database it came from.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from batchserve.events.errors import EventsError

__all__ = [
    "BACKUP_ID_RE",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "TABLES",
    "BackupError",
    "Column",
    "Manifest",
    "TableEntry",
    "backup_id",
    "decode_manifest",
    "encode_frame",
    "encode_manifest",
    "gunzip",
    "iter_frames",
]

FORMAT = "batchserve-events-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SourceKind = Literal["postgres", "sqlite"]
ENCODINGS: dict[str, str] = {"postgres": "pgcopy-binary", "sqlite": "msgpack-frames"}
SUFFIXES: dict[str, str] = {"postgres": "pgcopy.gz", "sqlite": "msgpack.gz"}

# Every table the migrations create except schema_migrations (restore rebuilds it by migrating),
# in foreign-key order: dimensions before the facts that reference them. api_keys holds only
# SHA-256 digests of the keys (never a key), and without it no client could call a restored server.
TABLES: tuple[str, ...] = ("time_dim", "user_dim", "image_dim", "class_dim", "api_event_fact", "api_keys")

BACKUP_ID_RE = re.compile(r"^\d{8}T\d{6}\.\d{3}Z$")
_TABLE_OBJECT_RE = re.compile(r"^[a-z_]+\.[a-z0-9.-]+$")
_FRAME_HEADER = struct.Struct(">I")
# Bounds what one decompression step may produce, so a hostile object cannot blow up memory.
_MAX_DECOMPRESSED_STEP = 4 << 20


class BackupError(EventsError):
    """A backup cannot be written or restored; the message says what to do about it."""


def backup_id(at: datetime) -> str:
    at = at.astimezone(UTC)
    return at.strftime("%Y%m%dT%H%M%S.") + f"{at.microsecond // 1000:03d}Z"


class Column(msgspec.Struct, frozen=True):
    name: str
    type: str  # as the database declares it (format_type in Postgres, the declared type in SQLite)


class TableEntry(msgspec.Struct, frozen=True):
    name: str
    object: str  # key relative to the backup's folder
    encoding: str
    columns: list[Column]
    rows: int
    bytes: int  # size of the object (compressed)
    raw_bytes: int  # size before compression
    sha256: str  # of the object's bytes


class Source(msgspec.Struct, frozen=True):
    kind: SourceKind
    database: str  # where the backup came from, without credentials


class Manifest(msgspec.Struct, frozen=True):
    format: str
    format_version: int
    backup_id: str
    created_at: str  # ISO 8601 UTC: when the snapshot was taken
    completed_at: str
    source: Source
    schema_version: int
    batchserve_version: str
    compression: Literal["gzip"]
    tables: list[TableEntry]

    @property
    def total_rows(self) -> int:
        return sum(t.rows for t in self.tables)

    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.tables)


def encode_manifest(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def decode_manifest(data: bytes, where: str) -> Manifest:
    """The manifest at ``where``, checked for what restore relies on; BackupError otherwise."""
    try:
        raw: Any = msgspec.json.decode(data)
    except msgspec.DecodeError:
        raise BackupError(f"{where} is not JSON: not a batchserve backup manifest") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BackupError(f"{where} is not a batchserve event store backup manifest")
    if raw.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"{where} has backup format version {raw.get('format_version')!r}; this batchserve "
            f"reads version {FORMAT_VERSION}: restore it with the batchserve that wrote it"
        )
    try:
        manifest = msgspec.convert(raw, Manifest)
    except msgspec.ValidationError as exc:
        raise BackupError(f"{where} is malformed: {exc}") from None
    if manifest.schema_version < 1:
        raise BackupError(f"{where}: invalid event schema version {manifest.schema_version}")
    names = [t.name for t in manifest.tables]
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise BackupError(f"{where} lists tables this batchserve does not know: {', '.join(unknown)}")
    if names != sorted(names, key=TABLES.index) or len(set(names)) != len(names):
        raise BackupError(f"{where} lists its tables out of order or twice: {', '.join(names)}")
    for t in manifest.tables:
        # Object names are joined to the backup's prefix: nothing may climb out of it.
        if not _TABLE_OBJECT_RE.match(t.object) or t.encoding != ENCODINGS[manifest.source.kind]:
            raise BackupError(f"{where}: table {t.name} names an unexpected object {t.object!r} ({t.encoding})")
        if t.rows < 0 or t.bytes < 0 or not re.fullmatch(r"[0-9a-f]{64}", t.sha256):
            raise BackupError(f"{where}: table {t.name} has an invalid row count, size or sha256")
    return manifest


def encode_frame(rows: list[tuple[Any, ...]]) -> bytes:
    payload = msgspec.msgpack.encode(rows)
    return _FRAME_HEADER.pack(len(payload)) + payload


def iter_frames(chunks: Iterator[bytes], where: str) -> Iterator[list[list[Any]]]:
    """Rows of a MessagePack-frames stream, one frame's worth at a time."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= _FRAME_HEADER.size:
            (length,) = _FRAME_HEADER.unpack_from(buffer)
            end = _FRAME_HEADER.size + length
            if len(buffer) < end:
                break
            try:
                rows = msgspec.msgpack.decode(bytes(buffer[_FRAME_HEADER.size : end]), type=list[list[Any]])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise BackupError(f"{where} holds an undecodable frame: {exc}") from None
            del buffer[:end]
            yield rows
    if buffer:
        raise BackupError(f"{where} ends in the middle of a frame ({len(buffer)} bytes left over)")


def gunzip(chunks: Iterator[bytes], where: str) -> Iterator[bytes]:
    """Decompress a gzip stream chunk by chunk; BackupError for a corrupt or truncated one."""
    decompressor = zlib.decompressobj(wbits=31)
    try:
        for chunk in chunks:
            if decompressor.eof:
                if chunk:
                    raise BackupError(f"{where} has data after the end of its gzip stream")
                continue
            data = chunk
            while data:
                out = decompressor.decompress(data, _MAX_DECOMPRESSED_STEP)
                data = decompressor.unconsumed_tail
                if out:
                    yield out
            if decompressor.eof and decompressor.unused_data:
                raise BackupError(f"{where} has data after the end of its gzip stream")
        tail = decompressor.flush()
        if tail:
            yield tail
    except zlib.error as exc:
        raise BackupError(f"{where} is not a valid gzip stream ({exc}): the object is corrupt") from None
    if not decompressor.eof:
        raise BackupError(f"{where} is truncated: its gzip stream ends early")
