"""``batchserve db upgrade`` and ``batchserve stats``: the event pipeline's CLI subcommands
(``db backup`` and ``db restore`` live in backup_commands.py).

``register(subparsers)`` adds them to the main parser; each sets ``func`` to a callable taking
the parsed namespace and returning the exit status (0 ok, 1 store or server error).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import urllib.parse
from datetime import datetime
from typing import Any, TextIO

import msgspec

from batchserve.client.http import HttpError, NotJson, Unreachable, request_json
from batchserve.events.analytics import GROUP_BYS, StatsQuery, query_stats
from batchserve.events.backup_commands import register_backup
from batchserve.events.config import redact_url
from batchserve.events.errors import EventsError
from batchserve.events.store import EventStore, open_store
from batchserve.events.store_options import add_store_arguments, resolve_config

__all__ = ["register", "run_db_upgrade", "run_stats"]

ENV_API_KEY = "BATCHSERVE_API_KEY"
_HTTP_TIMEOUT_S = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="event database maintenance", description="Event database maintenance.")
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    upgrade = db_commands.add_parser(
        "upgrade",
        help="apply pending event schema migrations",
        description="Create or upgrade the event schema and print its version.",
    )
    add_store_arguments(upgrade.add_mutually_exclusive_group())
    upgrade.set_defaults(func=run_db_upgrade)
    register_backup(db_commands)

    stats = subparsers.add_parser(
        "stats",
        help="request statistics from a server or the event store",
        description="Request statistics: groups with latency percentiles, batch sizes, top classes.",
    )
    source = stats.add_mutually_exclusive_group()
    source.add_argument("--url", help="ask a running server (GET URL/v1/stats) instead of the store")
    add_store_arguments(source)
    stats.add_argument("--from", dest="start", type=_iso_datetime, metavar="TIME", help="ISO 8601, inclusive")
    stats.add_argument("--to", dest="end", type=_iso_datetime, metavar="TIME", help="ISO 8601, exclusive")
    stats.add_argument("--model", help="only this model")
    stats.add_argument("--user", help="only this user (key id or 'anonymous')")
    stats.add_argument("--group-by", choices=GROUP_BYS, default="minute", help="default: minute")
    stats.add_argument("--top-classes", type=int, default=10, metavar="N", help="default: 10")
    stats.add_argument("--api-key", default=None, help=f"X-API-Key sent with --url (env {ENV_API_KEY})")
    stats.add_argument("--json", action="store_true", help="print the JSON answer instead of tables")
    stats.set_defaults(func=run_stats)


def _iso_datetime(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date/time: {text!r}") from None


def run_db_upgrade(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        config = resolve_config(args)
        store = open_store(config)
        version = asyncio.run(_with_store(store, migrate=True, work=None))
    except EventsError as exc:
        print(f"batchserve db upgrade: error: {exc}", file=sys.stderr)
        return 1
    print(f"event schema at version {version} ({store.describe()})", file=out)
    return 0


def run_stats(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        query = StatsQuery(
            start=args.start,
            end=args.end,
            model=args.model,
            user=args.user,
            group_by=args.group_by,
            top_classes=args.top_classes,
        )
        if args.url:
            result = _fetch_from_server(args.url, query, args.api_key or os.environ.get(ENV_API_KEY))
        else:
            store = open_store(resolve_config(args))
            result = asyncio.run(_with_store(store, migrate=False, work=lambda s: query_stats(s, query)))
    except (EventsError, _ServerError) as exc:
        print(f"batchserve stats: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        out.write(msgspec.json.format(msgspec.json.encode(result), indent=2).decode() + "\n")
    else:
        out.write(render_stats(result, query))
    return 0


async def _with_store(store: EventStore, *, migrate: bool, work: Any) -> Any:
    try:
        version = await store.open(migrate=migrate)
        return version if work is None else await work(store)
    finally:
        await store.close()


class _ServerError(Exception):
    pass


def _fetch_from_server(base_url: str, q: StatsQuery, api_key: str | None) -> dict[str, Any]:
    params: dict[str, str] = {"group_by": q.group_by}
    if q.start is not None:
        params["from"] = q.start.isoformat()
    if q.end is not None:
        params["to"] = q.end.isoformat()
    if q.model is not None:
        params["model"] = q.model
    if q.user is not None:
        params["user"] = q.user
    url = f"{base_url.rstrip('/')}/v1/stats?{urllib.parse.urlencode(params)}"
    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        result = request_json(url, headers=headers, timeout=_HTTP_TIMEOUT_S)
    except Unreachable as exc:
        raise _ServerError(f"cannot reach {redact_url(base_url)}: {exc.message}") from None
    except NotJson:
        raise _ServerError(f"{redact_url(url)} did not answer JSON") from None
    except HttpError as exc:
        raise _ServerError(f"{redact_url(url)} answered {exc.status}: {exc.message}") from None
    if not isinstance(result, dict) or "groups" not in result:
        raise _ServerError(f"{redact_url(url)} answered something other than statistics")
    return result


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render_stats(result: dict[str, Any], q: StatsQuery) -> str:
    """The statistics as plain-text tables."""
    filters = [f"group by {q.group_by}"]
    for label, value in (("from", q.start), ("to", q.end), ("model", q.model), ("user", q.user)):
        if value is not None:
            filters.append(f"{label} {value.isoformat() if isinstance(value, datetime) else value}")
    lines = [", ".join(filters), ""]
    groups = result.get("groups", [])
    if not groups:
        lines.append("no events")
    else:
        keys = ["(none)" if g["key"] is None else str(g["key"]) for g in groups]
        width = max(len(q.group_by), *(len(k) for k in keys))
        header = ("requests", "errors", "p50 ms", "p95 ms", "p99 ms", "mean batch")
        lines.append(f"{q.group_by:<{width}}  " + "  ".join(f"{h:>10}" for h in header))
        for key, g in zip(keys, groups, strict=True):
            lat = g["latency_ms"]
            mean = "-" if g["mean_batch_size"] is None else f"{g['mean_batch_size']:.2f}"
            cells = (str(g["requests"]), str(g["errors"]), _ms(lat["p50"]), _ms(lat["p95"]), _ms(lat["p99"]), mean)
            lines.append(f"{key:<{width}}  " + "  ".join(f"{c:>10}" for c in cells))
    histogram = result.get("batch_size_histogram", {})
    if histogram:
        lines += ["", "batch size  images"]
        lines += [f"{size:>10}  {count:>6}" for size, count in histogram.items()]
    classes = result.get("top_classes", [])
    if classes:
        lines += ["", "top classes"]
        lines += [f"{c['count']:>8}  {c['class_id']:>5}  {c['label'] or ''}" for c in classes]
    return "\n".join(lines) + "\n"
