"""Typed errors of the event pipeline."""

from __future__ import annotations

__all__ = [
    "EventsConfigError",
    "EventsError",
    "InvalidStatsQuery",
    "JournalError",
    "MigrationError",
    "SchemaMissing",
    "StoreError",
    "StoreUnavailable",
]


class EventsError(Exception):
    """Base class of every error raised by ``events``."""


class EventsConfigError(EventsError, ValueError):
    """An ``EventsConfig`` field holds a value the pipeline cannot work with."""


class StoreError(EventsError):
    """The event store rejected an operation for a reason other than reachability."""


class StoreUnavailable(StoreError):
    """The event store cannot be reached in time (refused, reset, timed out)."""


class SchemaMissing(StoreError):
    """The store holds no event schema yet: ``batchserve db upgrade`` creates it."""


class MigrationError(StoreError):
    """A schema migration could not be applied, or the migration files are inconsistent."""


class InvalidStatsQuery(EventsError, ValueError):
    """A statistics query asks for something that does not exist (bad group, reversed range)."""


class JournalError(EventsError):
    """The local spill journal cannot be written."""
