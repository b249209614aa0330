"""Configuration of the event pipeline (one object; the server maps flags and env onto it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import EventsConfigError

__all__ = ["PII_MODES", "EventsConfig", "redact_url"]

PII_MODES = ("full", "truncated", "off")


@dataclass(frozen=True)
class EventsConfig:
    """Where events go and how hard the writer tries to keep them.

    database_url: ``postgresql://...``; ``None`` selects the embedded SQLite file
        ``events_path``.  Extra query parameters are passed to Postgres as session settings,
        e.g. ``?search_path=analytics`` puts the schema in another namespace.
    events_path: the SQLite database used when no ``database_url`` is given.
    journal_dir: append-only spill journal for events the store could not take in time.
    flush_interval_ms / flush_max_events: the flusher writes whatever is buffered every
        interval, or as soon as this many events are waiting, whichever comes first.
    buffer_size: events held in memory before ``put`` starts spilling to the journal.
    journal_max_bytes: cap of the journal on disk; beyond it events are dropped (and counted).
    pii: ``full`` keeps client IP and user agent, ``truncated`` keeps the IPv4 /24 or IPv6 /48
        network address and the user agent, ``off`` drops both.
    enabled: ``False`` turns the writer into a no-op.
    store_timeout_s: bound on one store round (connect + write of one batch); past it the batch
        is spilled to the journal and the store is treated as down.
    reconnect_max_s: ceiling of the exponential backoff between reconnection attempts.
    """

    database_url: str | None = None
    events_path: Path = Path("batchserve-events.sqlite3")
    journal_dir: Path = Path("batchserve-journal")
    flush_interval_ms: int = 200
    flush_max_events: int = 500
    buffer_size: int = 50_000
    journal_max_bytes: int = 1 << 30
    pii: str = "truncated"
    enabled: bool = True
    store_timeout_s: float = 5.0
    reconnect_max_s: float = 10.0

    def __post_init__(self) -> None:
        # Paths arrive as strings from env vars and CLI flags; normalise once here.
        object.__setattr__(self, "events_path", Path(self.events_path))
        object.__setattr__(self, "journal_dir", Path(self.journal_dir))
        if self.database_url is not None and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise EventsConfigError(
                f"database_url must start with postgresql:// or postgres://, got {redact_url(self.database_url)!r}"
            )
        if self.pii not in PII_MODES:
            raise EventsConfigError(f"pii must be one of {', '.join(PII_MODES)}, got {self.pii!r}")
        for name in ("flush_interval_ms", "flush_max_events", "buffer_size", "journal_max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise EventsConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("store_timeout_s", "reconnect_max_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise EventsConfigError(f"{name} must be a positive number, got {value!r}")

    @property
    def store_kind(self) -> str:
        return "postgres" if self.database_url else "sqlite"


def redact_url(url: str) -> str:
    """Hide a password before a URL reaches an error message or a log."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
