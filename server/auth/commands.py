"""`batchserve keys create|list|revoke`: API keys in the event store's database.

`create` prints the key alone on stdout (it is shown once: only its SHA-256 is stored), so
`KEY=$(batchserve keys create NAME --scopes classify)` captures it; everything else goes to stderr.
The database is chosen as for `batchserve db` and `batchserve stats`: `--database-url` or
`--events-path` (env BATCHSERVE_DATABASE_URL / BATCHSERVE_EVENTS_PATH), else the SQLite file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, time
from typing import Any, TextIO, TypeVar

from batchserve.events.config import EventsConfig
from batchserve.events.errors import EventsError, SchemaMissing
from batchserve.events.keys import KeyStore, StoredKey, open_key_store
from batchserve.events.store_options import add_store_arguments, resolve_config
from batchserve.server.auth.keys import (
    check_name,
    default_burst,
    format_rate,
    key_digest,
    new_key,
    parse_rate,
    parse_scopes,
)

T = TypeVar("T")


def _typed(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def parse_expiry(text: str) -> datetime:
    """ISO 8601 date or date-time; without a zone it is UTC, a bare date is its midnight (UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or date-time: {text!r}") from None
    if len(text.strip()) == 10:  # a date alone
        value = datetime.combine(value.date(), time(0))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a positive integer, not {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys",
                                 description="API keys, stored hashed in the event store's database.")
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="create a key and print it (shown once)",
                                description="Creates a key and prints it alone on stdout; only its hash is stored.")
    create.add_argument("name", type=_typed(check_name, "name"), help="the key's name: events name the caller by it")
    create.add_argument("--scopes", required=True, type=_typed(parse_scopes, "scopes"), metavar="classify,stats,admin",
                        help="what the key may call: classify (classify, infer, model metadata), stats (statistics, "
                             "metrics), admin (model control)")
    create.add_argument("--rate", type=_typed(parse_rate, "rate"), default=None, metavar="N/s|N/min|N/h",
                        help="sustained requests allowed, e.g. 20/s (default: no rate limit)")
    create.add_argument("--burst", type=_typed(_positive_int, "burst"), default=None, metavar="N",
                        help="requests allowed at once above the rate (default: two seconds' worth)")
    create.add_argument("--expires", type=_typed(parse_expiry, "expires"), default=None, metavar="ISO",
                        help="when the key stops working, e.g. 2027-01-01 or 2027-01-01T12:00:00+02:00 (UTC if "
                             "no zone)")
    add_store_arguments(create.add_mutually_exclusive_group())
    create.set_defaults(func=run_create)

    listing = actions.add_parser("list", help="list keys (never the keys themselves)")
    add_store_arguments(listing.add_mutually_exclusive_group())
    listing.set_defaults(func=run_list)

    revoke = actions.add_parser("revoke", help="revoke a key (servers stop accepting it within --key-refresh-s)")
    revoke.add_argument("name", help="the key's name")
    add_store_arguments(revoke.add_mutually_exclusive_group())
    revoke.set_defaults(func=run_revoke)


async def _with_store(config: EventsConfig, work: Callable[[KeyStore], Awaitable[T]], *, migrate: bool) -> T:
    store = open_key_store(config)
    try:
        await store.open(migrate=migrate)
        return await work(store)
    finally:
        await store.close()


def _fail(action: str, message: str) -> int:
    print(f"batchserve keys {action}: error: {message}", file=sys.stderr)
    return 1


def run_create(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if args.burst is not None and args.rate is None:
        return _fail("create", "--burst needs --rate")
    now = datetime.now(UTC)
    if args.expires is not None and args.expires <= now:
        return _fail("create", f"--expires {args.expires.isoformat()} is in the past")
    key = new_key()
    burst = None if args.rate is None else (args.burst or default_burst(args.rate))
    row = StoredKey(args.name, key_digest(key), args.scopes, args.rate, burst, now, args.expires)
    try:
        # Creating the first key creates the key table too, as `batchserve db upgrade` would.
        asyncio.run(_with_store(resolve_config(args), lambda store: store.add(row), migrate=True))
    except EventsError as exc:
        return _fail("create", str(exc))
    limit = "no rate limit" if args.rate is None else f"rate {format_rate(args.rate)}, burst {burst}"
    expiry = f", expires {args.expires.isoformat()}" if args.expires else ""
    print(f"created key {args.name!r} ({', '.join(args.scopes)}; {limit}{expiry}); it is shown once, below",
          file=sys.stderr)
    print(key, file=out)
    return 0


def describe_state(key: StoredKey, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked " + key.revoked_at.astimezone(UTC).isoformat(timespec="seconds")
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def run_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        rows = asyncio.run(_with_store(resolve_config(args), lambda store: store.list_keys(), migrate=False))
    except SchemaMissing:
        rows = []  # no key was ever created in this database
    except EventsError as exc:
        return _fail("list", str(exc))
    now = datetime.now(UTC)
    header = ("name", "scopes", "rate", "burst", "created", "expires", "state")
    table = [header] + [
        (k.name, ",".join(k.scopes), "-" if k.rate_per_s is None else format_rate(k.rate_per_s),
         "-" if k.burst is None else str(k.burst), k.created_at.astimezone(UTC).isoformat(timespec="seconds"),
         "-" if k.expires_at is None else k.expires_at.astimezone(UTC).isoformat(timespec="seconds"),
         describe_state(k, now))
        for k in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    if not rows:
        out.write("(no keys: `batchserve keys create NAME --scopes classify` makes one)\n")
    return 0


def run_revoke(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        revoked = asyncio.run(_with_store(
            resolve_config(args), lambda store: store.revoke(args.name, datetime.now(UTC)), migrate=False))
    except EventsError as exc:
        return _fail("revoke", str(exc))
    if not revoked:
        return _fail("revoke", f"no active key named {args.name!r}")
    print(f"revoked {args.name!r}: servers stop accepting it within their --key-refresh-s (5 s by default)", file=out)
    return 0
