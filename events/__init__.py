"""The event pipeline: every classification attempt becomes one row of a star schema.

``EventWriter.put`` is called on the request path and never blocks; a background flusher
writes batches to PostgreSQL (COPY) or, without a database URL, to an embedded SQLite file,
and spills to a local journal while the database is away.  ``query_stats`` answers the
analytics of ``GET /v1/stats``.  See docs/events.md.
"""

from batchserve.events.analytics import StatsQuery, query_stats
from batchserve.events.config import EventsConfig
from batchserve.events.errors import (
    EventsConfigError,
    EventsError,
    InvalidStatsQuery,
    JournalError,
    MigrationError,
    SchemaMissing,
    StoreError,
    StoreUnavailable,
)
from batchserve.events.model import Event
from batchserve.events.store import EventStore, open_store
from batchserve.events.writer import EventWriter, WriterStats

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
