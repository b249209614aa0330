"""Typed errors of the event pipeline."""

from __future__ import annotations

__all__ = [
    "EventsConfigError",
    "EventsError",
    "InvalidStatsQuery",
    "JournalError",
    "MigrationError",
    "SchemaMissing",
    "StatsBusy",
    "StatsTimeout",
    "StoreError",
    "StoreRejected",
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


class StoreRejected(StoreError):
    """The store refuses these events for what they hold (a constraint, a value it cannot take).

    Retrying the same events cannot succeed, unlike ``StoreUnavailable``: the writer sets them
    aside in the dead-letter directory instead of keeping them in the journal forever.
    """


class StatsTimeout(StoreError):
    """A statistics query ran past its statement timeout (the store cancelled it)."""


class StatsBusy(StoreError):
    """Every connection reserved for statistics stayed busy until the query's time was up."""


class SchemaMissing(StoreError):
    """The store holds no event schema yet: ``batchserve db upgrade`` creates it."""


class MigrationError(StoreError):
    """A schema migration could not be applied, or the migration files are inconsistent."""


class InvalidStatsQuery(EventsError, ValueError):
    """A statistics query asks for something that does not exist (bad group, reversed range)."""


class JournalError(EventsError):
    """The local spill journal cannot be written."""
