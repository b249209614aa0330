"""`batchserve db backup` / `db restore` against real databases (PostgreSQL, SQLite) and moto's S3
server in its own process: round trips, consistency under concurrent writes, tampering, refusals."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchserve.cli import main
from batchserve.events.backup import BackupOptions, run_backup
from batchserve.events.backup_format import (
    TABLES,
    BackupError,
    Manifest,
    TableEntry,
    decode_manifest,
    encode_frame,
    gunzip,
    iter_frames,
)
from batchserve.events.config import EventsConfig
from batchserve.events.migrate import latest_version, migrate_sqlite
from batchserve.events.restore import RestoreOptions, TargetNotEmpty, run_restore
from batchserve.events.store import open_store
from batchserve.loadtest.server_process import free_port
from batchserve.model_repo.location import parse_object_store_url
from batchserve.model_repo.object_store import GCS_HMAC_ID_ENV, GCS_HMAC_SECRET_ENV
from tests.events.backup_helpers import SMALL_PART, counts, late_events, populate, read_tables, sibling_schema
from tests.events.event_helpers import closed_port
from tests.jobs.conftest import start_moto, stop
from tests.jobs.queue_helpers import new_bucket, point_aws_at, s3_client


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("S3_UPLOAD_PART_MIN_SIZE", str(SMALL_PART))
        process = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


@pytest.fixture(autouse=True)
def aws_environment(moto_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    point_aws_at(moto_s3, monkeypatch)
    monkeypatch.delenv("BATCHSERVE_DATABASE_URL", raising=False)
    monkeypatch.delenv("BATCHSERVE_EVENTS_PATH", raising=False)


@pytest.fixture
def s3(moto_s3: str) -> Any:
    return s3_client(moto_s3)


@pytest.fixture
def bucket(s3: Any) -> str:
    return new_bucket(s3, "backups")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[EventsConfig, EventsConfig]]:
    """(source, target) of one kind: the target is empty and has no schema yet."""
    if request.param == "sqlite":
        yield EventsConfig(events_path=tmp_path / "source.sqlite3"), EventsConfig(events_path=tmp_path / "t.sqlite3")
        return
    source = request.getfixturevalue("pg_url")
    with sibling_schema() as target:
        yield EventsConfig(database_url=source), EventsConfig(database_url=target)


def store_flags(config: EventsConfig) -> list[str]:
    if config.database_url:
        return ["--database-url", config.database_url]
    return ["--events-path", str(config.events_path)]


def backup(config: EventsConfig, url: str, **options: Any) -> tuple[str, Manifest]:
    return asyncio.run(run_backup(config, parse_object_store_url(url), BackupOptions(**options)))


def object_bytes(s3: Any, url: str, name: str) -> bytes:
    location = parse_object_store_url(url)
    return bytes(s3.get_object(Bucket=location.bucket, Key=location.key(name))["Body"].read())


def put_object(s3: Any, url: str, name: str, data: bytes) -> None:
    location = parse_object_store_url(url)
    s3.put_object(Bucket=location.bucket, Key=location.key(name), Body=data)


def rewrite_manifest(s3: Any, url: str, change: Any) -> None:
    manifest = json.loads(object_bytes(s3, url, "manifest.json"))
    change(manifest)
    put_object(s3, url, "manifest.json", json.dumps(manifest).encode())


def table(manifest: Manifest, name: str) -> TableEntry:
    return next(t for t in manifest.tables if t.name == name)


def test_round_trip_reproduces_every_row_and_new_writes_follow(
    databases: tuple[EventsConfig, EventsConfig], bucket: str, s3: Any
) -> None:
    source, target = databases
    asyncio.run(populate(source, n=500))
    expected = read_tables(source)
    url, manifest = backup(source, f"s3://{bucket}/events/prod", part_bytes=SMALL_PART)

    assert url.startswith(f"s3://{bucket}/events/prod/") and url.endswith(manifest.backup_id)
    assert [t.name for t in manifest.tables] == list(TABLES)
    assert {t.name: t.rows for t in manifest.tables} == {t: len(rows) for t, rows in expected.items()}
    kind = "postgres" if source.database_url else "sqlite"
    assert (manifest.schema_version, manifest.source.kind) == (latest_version(), kind)
    for entry in manifest.tables:
        data = object_bytes(s3, url, entry.object)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.bytes, entry.sha256)
        assert len(gzip.decompress(data)) == entry.raw_bytes
    # The largest object went up in several parts.
    location = parse_object_store_url(url)
    biggest = max(manifest.tables, key=lambda t: t.bytes)
    assert biggest.bytes > SMALL_PART
    etag = s3.head_object(Bucket=bucket, Key=location.key(biggest.object))["ETag"]
    assert "-" in etag, f"{biggest.name} ({biggest.bytes} bytes) was not a multipart upload: {etag}"

    restored = asyncio.run(run_restore(target, parse_object_store_url(url), RestoreOptions()))
    assert restored.schema_version == latest_version()
    assert read_tables(target) == expected

    async def write_more() -> None:
        store = open_store(target)
        await store.open()
        try:
            assert await store.write(late_events(5)) == 5  # no key collides with a restored one
        finally:
            await store.close()

    asyncio.run(write_more())
    after = read_tables(target)
    for name in ("time_dim", "user_dim", "image_dim", "class_dim", "api_event_fact"):
        old_keys = {row[0] for row in expected[name]}
        new_keys = [row[0] for row in after[name] if row[0] not in old_keys]
        assert new_keys and min(new_keys) > max(old_keys), name

    # Restoring again into the database, now holding rows, is refused and changes nothing.
    with pytest.raises(TargetNotEmpty, match="is not empty"):
        asyncio.run(run_restore(target, parse_object_store_url(url), RestoreOptions()))
    assert read_tables(target) == after


def test_backup_taken_while_the_writer_inserts_is_one_snapshot(
    databases: tuple[EventsConfig, EventsConfig], bucket: str
) -> None:
    source, target = databases
    asyncio.run(populate(source, n=60))
    before = counts(source)

    async def scenario() -> Manifest:
        writer = open_store(source)
        await writer.open()

        async def progress(entry: TableEntry) -> None:
            # Between the first table's COPY and the others', the writer commits events that add a
            # row to every table still to be read: a backup without one snapshot would hold facts
            # whose time_dim rows it lacks (and counts that disagree with them).
            if entry.name == "time_dim":
                assert await writer.write(late_events(25)) == 25

        try:
            _, manifest = await run_backup(
                source,
                parse_object_store_url(f"s3://{bucket}/consistent"),
                BackupOptions(part_bytes=SMALL_PART),
                progress,
            )
        finally:
            await writer.close()
        return manifest

    manifest = asyncio.run(scenario())
    after = counts(source)
    assert all(after[t] > before[t] for t in TABLES if t != "api_keys")  # the writes did land meanwhile
    assert {t.name: t.rows for t in manifest.tables} == before
    asyncio.run(run_restore(target, parse_object_store_url(f"s3://{bucket}/consistent"), RestoreOptions()))
    assert counts(target) == before


def _tamper(s3: Any, url: str, entry: TableEntry) -> bytes:
    """Flip one bit of the table's data inside a valid gzip stream: only the sha256 can tell."""
    original = object_bytes(s3, url, entry.object)
    data = gzip.decompress(original)
    put_object(s3, url, entry.object, gzip.compress(data[:-2] + bytes([data[-2] ^ 1]) + data[-1:]))
    return original


def test_corrupt_backups_fail_verification_and_leave_the_target_empty(
    databases: tuple[EventsConfig, EventsConfig], bucket: str, s3: Any
) -> None:
    source, target = databases
    asyncio.run(populate(source, n=30))
    url, manifest = backup(source, f"s3://{bucket}/corrupt")
    pristine = object_bytes(s3, url, "manifest.json")
    # The last table loaded: every other table is in (uncommitted) when the restore finds out.
    keys = table(manifest, "api_keys")

    def restore_fails(match: str) -> None:
        with pytest.raises(BackupError, match=match):
            asyncio.run(run_restore(target, parse_object_store_url(url), RestoreOptions()))
        assert all(not rows for rows in read_tables(target).values())

    original = _tamper(s3, url, keys)
    restore_fails(rf"{keys.object} does not match the manifest .* corrupt or was changed after the backup")
    put_object(s3, url, keys.object, original)

    def miscount(m: dict[str, Any]) -> None:
        next(t for t in m["tables"] if t["name"] == "api_keys")["rows"] += 1

    rewrite_manifest(s3, url, miscount)
    restore_fails("held 2 rows of api_keys; the manifest says 3")

    # As if the backup itself had hashed a cut stream: only decompression can tell.
    cut = original[:-20]
    put_object(s3, url, keys.object, cut)
    put_object(s3, url, "manifest.json", pristine)

    def match_the_cut(m: dict[str, Any]) -> None:
        t = next(t for t in m["tables"] if t["name"] == "api_keys")
        t["bytes"], t["sha256"] = len(cut), hashlib.sha256(cut).hexdigest()

    rewrite_manifest(s3, url, match_the_cut)
    restore_fails(rf"{keys.object} is truncated")

    # What the failures left behind takes the intact backup.
    put_object(s3, url, keys.object, original)
    put_object(s3, url, "manifest.json", pristine)
    asyncio.run(run_restore(target, parse_object_store_url(url), RestoreOptions()))
    assert read_tables(target) == read_tables(source)


def test_cli_round_trip_through_a_prefix_picks_the_latest_complete_backup(
    tmp_path: Path, bucket: str, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = EventsConfig(events_path=tmp_path / "s.sqlite3"), EventsConfig(events_path=tmp_path / "t.sqlite3")
    asyncio.run(populate(source, n=5))
    assert main(["db", "backup", "--to", f"s3://{bucket}/nightly", *store_flags(source)]) == 0
    first = capsys.readouterr().out
    asyncio.run(populate(source, n=5, start=100))
    assert main(["db", "backup", "--to", f"s3://{bucket}/nightly", *store_flags(source)]) == 0
    second = capsys.readouterr().out
    assert "backup complete: s3://" in second and f"{counts(source)['api_event_fact']} rows" in " ".join(second.split())
    assert first.split("backup complete: ")[1].split()[0] < second.split("backup complete: ")[1].split()[0]
    # A later backup that never finished (no manifest) is passed over.
    put_object(s3, f"s3://{bucket}/nightly/29991231T000000.000Z", "time_dim.msgpack.gz", gzip.compress(b""))

    assert main(["db", "restore", "--from", f"s3://{bucket}/nightly", *store_flags(target)]) == 0
    out = capsys.readouterr().out
    assert "restore complete: " + second.split("backup complete: ")[1].split()[0] in out
    assert "loaded (sha256 and row count verified)" in out
    assert read_tables(target) == read_tables(source)


def test_gs_urls_go_through_the_s3_compatible_endpoint_with_an_hmac_key(
    tmp_path: Path, bucket: str, moto_s3: str, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cloud Storage's XML API stands in as moto here; the HMAC key is what signs the requests, and
    # AWS credentials must not be needed for gs://.
    monkeypatch.setenv(GCS_HMAC_ID_ENV, "GOOG1EXAMPLE")
    monkeypatch.setenv(GCS_HMAC_SECRET_ENV, "secret")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)
    source, target = EventsConfig(events_path=tmp_path / "s.sqlite3"), EventsConfig(events_path=tmp_path / "t.sqlite3")
    asyncio.run(populate(source, n=500))
    location = parse_object_store_url(f"gs://{bucket}/gcs")
    url, manifest = asyncio.run(
        run_backup(source, location, BackupOptions(endpoint_url=moto_s3, part_bytes=SMALL_PART))
    )
    assert url.startswith(f"gs://{bucket}/gcs/")
    biggest = max(manifest.tables, key=lambda t: t.bytes)
    assert "-" in s3.head_object(Bucket=bucket, Key=f"gcs/{manifest.backup_id}/{biggest.object}")["ETag"]
    asyncio.run(run_restore(target, location, RestoreOptions(endpoint_url=moto_s3)))
    assert read_tables(target) == read_tables(source)


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one line a failing command prints (exit status 1, no traceback)."""
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/backups", "is not an object store URL"),
        ("s3://", "names no bucket"),
        ("s3://Not_A_Bucket/p", "is not a valid bucket name"),
        ("s3://bucket/p?x=1", "takes no query"),
    ],
)
def test_malformed_urls_are_named(url: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sqlite = ["--events-path", str(tmp_path / "e.sqlite3")]
    assert message in cli_error(capsys, "db", "backup", "--to", url, *sqlite)
    assert message in cli_error(capsys, "db", "restore", "--from", url, *sqlite)


def test_bad_input_gets_one_clear_message(
    tmp_path: Path, bucket: str, s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "s.sqlite3"
    flags = ["--events-path", str(source)]
    missing = f"nobucket-{uuid.uuid4().hex[:8]}"
    assert f"bucket '{missing}' does not exist" in cli_error(
        capsys, "db", "backup", "--to", f"s3://{missing}/p", *flags
    )
    assert "no events database at" in cli_error(capsys, "db", "backup", "--to", f"s3://{bucket}/p", *flags)
    sqlite3.connect(source).close()  # a file without the schema
    assert "holds no event schema" in cli_error(capsys, "db", "backup", "--to", f"s3://{bucket}/p", *flags)
    closed = f"postgresql://postgres@127.0.0.1:{closed_port()}/test"
    assert "cannot reach postgres" in cli_error(
        capsys, "db", "backup", "--to", f"s3://{bucket}/p", "--database-url", closed
    )

    assert "no backup at" in cli_error(capsys, "db", "restore", "--from", f"s3://{bucket}/nothing-here", *flags)
    half = f"s3://{bucket}/half/20260101T000000.000Z"
    put_object(s3, half, "time_dim.msgpack.gz", gzip.compress(b""))
    assert f"the backup at {half} is incomplete" in cli_error(capsys, "db", "restore", "--from", half, *flags)

    events = EventsConfig(events_path=tmp_path / "events.sqlite3")
    asyncio.run(populate(events, n=3))
    url, _ = backup(events, f"s3://{bucket}/good")
    # The kind is checked before any connection: a Postgres URL nobody listens on will do.
    assert "restores into sqlite only" in cli_error(capsys, "db", "restore", "--from", url, "--database-url", closed)
    manifest = object_bytes(s3, url, "manifest.json")
    rewrite_manifest(s3, url, lambda m: m.update(schema_version=latest_version() + 1))
    assert "newer than this batchserve knows" in cli_error(capsys, "db", "restore", "--from", url, *flags)

    def from_postgres(m: dict[str, Any]) -> None:
        m["source"]["kind"] = "postgres"
        for t in m["tables"]:
            t["encoding"] = "pgcopy-binary"

    put_object(s3, url, "manifest.json", manifest)
    rewrite_manifest(s3, url, from_postgres)
    assert "cannot reach postgres" in cli_error(capsys, "db", "restore", "--from", url, "--database-url", closed)
    assert not source.stat().st_size  # nothing was written into the file without schema


def test_manifests_that_are_not_ours_or_reach_outside_the_backup_are_refused() -> None:
    good = {
        "format": "batchserve-events-backup",
        "format_version": 1,
        "backup_id": "20260101T000000.000Z",
        "created_at": "2026-01-01T00:00:00Z",
        "completed_at": "2026-01-01T00:00:01Z",
        "source": {"kind": "sqlite", "database": "sqlite e.sqlite3"},
        "schema_version": 3,
        "batchserve_version": "1.0",
        "compression": "gzip",
        "tables": [
            {
                "name": "api_keys",
                "object": "api_keys.msgpack.gz",
                "encoding": "msgpack-frames",
                "columns": [{"name": "name", "type": "TEXT"}],
                "rows": 1,
                "bytes": 10,
                "raw_bytes": 20,
                "sha256": "0" * 64,
            }
        ],
    }
    assert decode_manifest(json.dumps(good).encode(), "m").total_rows == 1

    def refused(match: str, data: bytes) -> None:
        with pytest.raises(BackupError, match=match):
            decode_manifest(data, "m")

    refused("is not JSON", b"{not json")
    refused("not a batchserve event store backup manifest", b'{"format": "something else"}')
    refused("backup format version 2", json.dumps({**good, "format_version": 2}).encode())
    refused("malformed", json.dumps({**good, "schema_version": "three"}).encode())
    escape = json.dumps(good).replace("api_keys.msgpack.gz", "../../x.msgpack.gz").encode()
    refused("unexpected object", escape)
    twice = {**good, "tables": good["tables"] * 2}
    refused("out of order or twice", json.dumps(twice).encode())


def test_the_table_list_covers_every_migrated_table_in_foreign_key_order() -> None:
    con = sqlite3.connect(":memory:", isolation_level=None)
    migrate_sqlite(con)
    created = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert created - {"schema_migrations", "sqlite_sequence"} == set(TABLES)
    for i, name in enumerate(TABLES):
        referenced = {r[2] for r in con.execute(f"PRAGMA foreign_key_list({name})")}
        assert referenced <= set(TABLES[:i]), name


def test_gunzip_names_corrupt_truncated_and_padded_streams() -> None:
    data = gzip.compress(b"x" * 100_000 + bytes(range(256)) * 50)
    assert b"".join(gunzip(iter([data[:10], data[10:]]), "o")) == gzip.decompress(data)
    with pytest.raises(BackupError, match="o is truncated"):
        list(gunzip(iter([data[:-8]]), "o"))
    with pytest.raises(BackupError, match="not a valid gzip stream"):
        list(gunzip(iter([b"PK\x03\x04" + data]), "o"))
    with pytest.raises(BackupError, match="data after the end"):
        list(gunzip(iter([data, b"trailing"]), "o"))
    frames = encode_frame([(1, "a", b"\x00", None, 1.5)]) + encode_frame([(2, "b", b"", 0, -0.0)])
    assert list(iter_frames(iter([frames[:3], frames[3:]]), "o")) == [
        [[1, "a", b"\x00", None, 1.5]],
        [[2, "b", b"", 0, -0.0]],
    ]
    with pytest.raises(BackupError, match="ends in the middle of a frame"):
        list(iter_frames(iter([frames[:-1]]), "o"))
