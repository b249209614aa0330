"""Where the event store is, as every command that opens it takes it: `--database-url` (or
BATCHSERVE_DATABASE_URL) for Postgres, else the SQLite file `--events-path` (or BATCHSERVE_EVENTS_PATH).
The API keys live in the same database, so `batchserve keys` takes the same options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from batchserve.events.config import EventsConfig

ENV_DATABASE_URL = "BATCHSERVE_DATABASE_URL"
ENV_EVENTS_PATH = "BATCHSERVE_EVENTS_PATH"


def add_store_arguments(group: argparse._MutuallyExclusiveGroup) -> None:
    """--database-url | --events-path: the event store's database (the API keys live there too)."""
    group.add_argument(
        "--database-url",
        default=None,
        help=f"postgresql://... (env {ENV_DATABASE_URL}); without one, the SQLite file",
    )
    group.add_argument(
        "--events-path",
        type=Path,
        default=None,
        help=f"SQLite events file (env {ENV_EVENTS_PATH}; default {EventsConfig.events_path})",
    )


def resolve_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> EventsConfig:
    """Flags beat environment variables; an explicit --events-path beats BATCHSERVE_DATABASE_URL."""
    env = os.environ if environ is None else environ
    if args.events_path is not None:
        return EventsConfig(database_url=None, events_path=args.events_path)
    url = args.database_url or env.get(ENV_DATABASE_URL) or None
    path = env.get(ENV_EVENTS_PATH)
    return EventsConfig(database_url=url, events_path=Path(path) if path else EventsConfig.events_path)
