"""The event pipeline: every classification attempt becomes one row of a star schema.

``EventWriter.put`` is called on the request path and never blocks; a background flusher
writes batches to PostgreSQL (COPY) or, without a database URL, to an embedded SQLite file,
and spills to a local journal while the database is away.  ``query_stats`` answers the
analytics of ``GET /v1/stats``.  See docs/events.md.
"""

from .analytics import StatsQuery, query_stats
from .config import EventsConfig
from .errors import (
    EventsConfigError,
    EventsError,
    InvalidStatsQuery,
    JournalError,
    MigrationError,
    SchemaMissing,
    StoreError,
    StoreUnavailable,
)
from .model import Event
from .store import EventStore, open_store
from .writer import EventWriter, WriterStats

__all__ = [
    "Event",
    "EventStore",
    "EventWriter",
    "EventsConfig",
    "EventsConfigError",
    "EventsError",
    "InvalidStatsQuery",
    "JournalError",
    "MigrationError",
    "SchemaMissing",
    "StatsQuery",
    "StoreError",
    "StoreUnavailable",
    "WriterStats",
    "open_store",
    "query_stats",
]
