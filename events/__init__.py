"""The event pipeline: every classification attempt becomes one row of a star schema.

``EventWriter.put`` is called on the request path and never blocks; a background flusher
writes batches to PostgreSQL (COPY) or, without a database URL, to an embedded SQLite file,
and spills to a local journal while the database is away.  ``query_stats`` answers the
analytics of ``GET /v1/stats`` on connections of their own (``StatsReader``).  See docs/events.md.
"""

from batchserve.events.analytics import StatsQuery, bounded_window, query_stats
from batchserve.events.config import EventsConfig
from batchserve.events.errors import (
    EventsConfigError,
    EventsError,
    InvalidStatsQuery,
    JournalError,
    MigrationError,
    SchemaMissing,
    StatsBusy,
    StatsTimeout,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from batchserve.events.model import Event
from batchserve.events.stats_reader import StatsReader, open_stats_reader
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
    "StatsBusy",
    "StatsQuery",
    "StatsReader",
    "StatsTimeout",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "WriterStats",
    "bounded_window",
    "open_stats_reader",
    "open_store",
    "query_stats",
]
