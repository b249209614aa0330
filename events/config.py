"""Configuration of the event pipeline (one object; the server maps flags and env onto it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from batchserve.events.errors import EventsConfigError

__all__ = ["PII_MODES", "EventsConfig", "PiiMode", "redact_url"]

PiiMode = Literal["full", "truncated", "off"]
PII_MODES: tuple[str, ...] = get_args(PiiMode)


def _option(help: str, flag: str) -> dict[str, str]:
    # `flag` is the name users know from `batchserve serve` (--events-pii, BATCHSERVE_EVENTS_PII).
    return {"help": help, "flag": flag}


@dataclass(frozen=True)
class EventsConfig:
    """Where events go and how hard the writer tries to keep them."""

    database_url: str | None = field(default=None, metadata=_option(
        "PostgreSQL URL for events (default: the SQLite file); extra query parameters become session "
        "settings, e.g. ?search_path=analytics", "database_url"))
    events_path: Path = field(default=Path("batchserve-events.sqlite3"), metadata=_option(
        "SQLite event store, used when no database URL is given", "events_path"))
    journal_dir: Path = field(default=Path("batchserve-journal"), metadata=_option(
        "append-only spill journal for events the store could not take in time", "journal_dir"))
    flush_interval_ms: int = field(default=200, metadata=_option(
        "the writer flushes whatever is buffered this often...", "events_flush_interval_ms"))
    flush_max_events: int = field(default=500, metadata=_option(
        "...or as soon as this many events wait, whichever comes first", "events_flush_max_events"))
    buffer_size: int = field(default=50_000, metadata=_option(
        "events held in memory before new ones spill to the journal", "events_buffer_size"))
    journal_max_bytes: int = field(default=1 << 30, metadata=_option(
        "cap of the journal on disk; beyond it events are dropped (and counted)", "events_journal_max_bytes"))
    pii: PiiMode = field(default="truncated", metadata=_option(
        "client IP and user agent: full keeps both, truncated keeps the IPv4 /24 or IPv6 /48 network and the "
        "user agent, off drops both", "events_pii"))
    enabled: bool = field(default=True, metadata=_option("record an event per classification", "events"))
    store_timeout_s: float = field(default=5.0, metadata=_option(
        "bound on one store round (connect + write of one batch); past it the batch is spilled to the journal "
        "and the store is treated as down", "events_store_timeout_s"))
    reconnect_max_s: float = field(default=10.0, metadata=_option(
        "ceiling of the exponential backoff between reconnection attempts", "events_reconnect_max_s"))
    dead_letter_max_bytes: int = field(default=256 << 20, metadata=_option(
        "cap of <journal-dir>/dead-letter/, where events the store rejects for their content are set aside; "
        "beyond it they are only counted as lost", "events_dead_letter_max_bytes"))
    stats_statement_timeout_ms: int = field(default=10_000, metadata=_option(
        "statement timeout of each /v1/stats query; past it the query is cancelled and answered 504 "
        "stats_timeout", "stats_statement_timeout_ms"))
    stats_max_connections: int = field(default=2, metadata=_option(
        "database connections reserved for /v1/stats, apart from the event writer's; more concurrent "
        "queries wait for one (within their timeout)", "stats_max_connections"))
    stats_default_window_hours: int = field(default=24, metadata=_option(
        "window of /v1/stats when the query gives no `from`: the hours before `to` (default now)",
        "stats_default_window_hours"))
    stats_max_window_days: int = field(default=31, metadata=_option(
        "widest from..to window /v1/stats answers; a wider one is refused with 422 invalid_parameter",
        "stats_max_window_days"))

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
        for name in (
            "flush_interval_ms",
            "flush_max_events",
            "buffer_size",
            "journal_max_bytes",
            "dead_letter_max_bytes",
            "stats_statement_timeout_ms",
            "stats_max_connections",
            "stats_default_window_hours",
            "stats_max_window_days",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise EventsConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.stats_default_window_hours > self.stats_max_window_days * 24:
            raise EventsConfigError(
                f"stats_default_window_hours ({self.stats_default_window_hours}) is wider than "
                f"stats_max_window_days ({self.stats_max_window_days})"
            )
        for name in ("store_timeout_s", "reconnect_max_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise EventsConfigError(f"{name} must be a positive number, got {value!r}")


def redact_url(url: str) -> str:
    """Hide a password before a URL reaches an error message or a log."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
