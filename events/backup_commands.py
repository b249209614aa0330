"""``batchserve db backup`` and ``batchserve db restore``: the event store to and from a bucket.

The object-store client (boto3) loads only when one of them runs, so building the CLI stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from batchserve.events.errors import EventsError
from batchserve.events.store_options import add_store_arguments, resolve_config
from batchserve.model_repo.errors import ObjectStoreError
from batchserve.model_repo.location import parse_object_store_url

__all__ = ["register_backup", "run_db_backup", "run_db_restore"]


def register_backup(db_commands: argparse._SubParsersAction) -> None:
    backup = db_commands.add_parser(
        "backup",
        help="write a consistent snapshot of the event store to s3:// or gs://",
        description="Snapshot every event store table (events and API key hashes) into "
        "URL/<UTC time>/: one gzip object per table, then manifest.json with row counts and sha256 digests.",
    )
    backup.add_argument("--to", dest="target", required=True, metavar="URL", help="s3://BUCKET/PREFIX or gs://...")
    _common(backup)
    backup.set_defaults(func=run_db_backup)

    restore = db_commands.add_parser(
        "restore",
        help="load a backup into an empty event store",
        description="Restore a backup made by `batchserve db backup` into an empty database: URL is the "
        "backup's folder, or the prefix given to --to (then the latest complete backup under it).",
    )
    restore.add_argument("--from", dest="source", required=True, metavar="URL", help="s3://BUCKET/PREFIX[/ID]")
    _common(restore)
    restore.set_defaults(func=run_db_restore)


def _common(parser: argparse.ArgumentParser) -> None:
    add_store_arguments(parser.add_mutually_exclusive_group())
    parser.add_argument(
        "--endpoint-url",
        default=None,
        metavar="URL",
        help="object store endpoint (MinIO, a local moto); s3:// also honours AWS_ENDPOINT_URL, gs:// defaults to "
        "https://storage.googleapis.com",
    )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def run_db_backup(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from batchserve.events.backup import BackupOptions, run_backup
    from batchserve.events.backup_format import TableEntry

    async def progress(entry: TableEntry) -> None:
        print(f"  {entry.name:<16} {entry.rows:>12,} rows  {_size(entry.bytes):>10}", file=out, flush=True)

    try:
        target = parse_object_store_url(args.target)
        config = resolve_config(args)
        url, manifest = asyncio.run(run_backup(config, target, BackupOptions(endpoint_url=args.endpoint_url), progress))
    except (ValueError, EventsError, ObjectStoreError) as exc:
        print(f"batchserve db backup: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"backup complete: {url} ({manifest.source.database}, event schema version {manifest.schema_version}): "
        f"{len(manifest.tables)} tables, {manifest.total_rows:,} rows, {_size(manifest.total_bytes)}",
        file=out,
    )
    return 0


def run_db_restore(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from batchserve.events.backup_format import TableEntry
    from batchserve.events.restore import RestoreOptions, run_restore

    async def progress(entry: TableEntry) -> None:
        print(
            f"  {entry.name:<16} {entry.rows:>12,} rows  loaded (sha256 and row count verified)", file=out, flush=True
        )

    try:
        source = parse_object_store_url(args.source)
        config = resolve_config(args)
        restored = asyncio.run(run_restore(config, source, RestoreOptions(endpoint_url=args.endpoint_url), progress))
    except (ValueError, EventsError, ObjectStoreError) as exc:
        print(f"batchserve db restore: error: {exc}", file=sys.stderr)
        return 1
    m = restored.manifest
    print(
        f"restore complete: {restored.url} (taken {m.created_at} from {m.source.kind}) into {restored.database}: "
        f"{len(m.tables)} tables, {m.total_rows:,} rows; event schema now at version {restored.schema_version}",
        file=out,
    )
    return 0
