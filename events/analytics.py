"""Statistics over the star schema: the answer of ``GET /v1/stats`` and ``batchserve stats``.

Both dialects compute the same numbers.  Percentiles are nearest-rank: the value at rank
``ceil(p * n)`` among the ``n`` non-null latencies of a group in ascending order, which is what
Postgres's ``percentile_disc`` returns; SQLite has no ordered-set aggregates, so its query ranks
rows with window functions and picks the first row with ``rank >= p * n`` — the same float
product compared the same way.  Final ordering happens in Python, so collations cannot differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal, Protocol, get_args

from batchserve.events.errors import InvalidStatsQuery
from batchserve.events.store_sqlite import format_ts, parse_ts

__all__ = ["GROUP_BYS", "PERCENTILES", "GroupBy", "StatsQuery", "StatsSource", "bounded_window", "query_stats"]

GroupBy = Literal["minute", "hour", "day", "class", "user", "model"]
GROUP_BYS: tuple[str, ...] = get_args(GroupBy)
TIME_GROUPS = ("minute", "hour", "day")
PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


@dataclass(frozen=True)
class StatsQuery:
    """``start`` is inclusive, ``end`` exclusive; naive datetimes are taken as UTC."""

    start: datetime | None = None
    end: datetime | None = None
    model: str | None = None
    user: str | None = None
    group_by: GroupBy = "minute"
    top_classes: int = 10

    def __post_init__(self) -> None:
        if self.group_by not in GROUP_BYS:
            raise InvalidStatsQuery(f"group_by must be one of {', '.join(GROUP_BYS)}, got {self.group_by!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, datetime):
                raise InvalidStatsQuery(f"{name} must be a datetime, got {type(value).__name__}")
            object.__setattr__(self, name, _utc(value))
        if self.start is not None and self.end is not None and self.start > self.end:
            raise InvalidStatsQuery(f"start ({self.start.isoformat()}) is after end ({self.end.isoformat()})")
        if isinstance(self.top_classes, bool) or not isinstance(self.top_classes, int) or self.top_classes < 0:
            raise InvalidStatsQuery(f"top_classes must be a non-negative integer, got {self.top_classes!r}")


class StatsSource(Protocol):
    """What the queries run on: an ``EventStore`` (the CLI) or a ``StatsReader`` (the server)."""

    @property
    def kind(self) -> str: ...

    async def fetch(self, sql: str, params: Sequence[Any] = ...) -> list[tuple[Any, ...]]: ...


def _utc(value: datetime) -> datetime:
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+05:00 has no UTC equivalent
        raise InvalidStatsQuery(f"{value.isoformat()} is outside the range of representable UTC times") from None


def bounded_window(
    start: datetime | None, end: datetime | None, *, now: datetime, default: timedelta, maximum: timedelta
) -> tuple[datetime, datetime]:
    """The ``[start, end)`` a query may scan: ``end`` defaults to ``now``, ``start`` to ``default`` before it.

    A wider window than ``maximum`` raises ``InvalidStatsQuery`` naming the limit, so one request
    cannot make the database scan every event it ever stored.  Naive times are UTC.
    """
    end = _utc(end) if end is not None else now
    try:
        start = _utc(start) if start is not None else end - default
    except OverflowError:
        raise InvalidStatsQuery(f"`to` ({end.isoformat()}) is too early to count a default window back from") from None
    if start > end:
        raise InvalidStatsQuery(f"`from` ({start.isoformat()}) is after `to` ({end.isoformat()})")
    if end - start > maximum:
        raise InvalidStatsQuery(
            f"the window from {start.isoformat()} to {end.isoformat()} spans {(end - start) / timedelta(days=1):.1f} "
            f"days; at most {maximum / timedelta(days=1):g} days are answered at once (stats_max_window_days): "
            "narrow `from` and `to`"
        )
    return start, end


class _Sql:
    """Placeholders and literals of one dialect, collecting the parameters in order."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgres"
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        if isinstance(value, datetime) and not self.pg:
            value = format_ts(value)
        self.params.append(value)
        return f"${len(self.params)}" if self.pg else "?"


_FROM = """
FROM api_event_fact f
JOIN time_dim t ON t.time_key = f.time_key
JOIN user_dim u ON u.user_key = f.user_key
LEFT JOIN class_dim c ON c.class_key = f.class_key
"""


def _where(sql: _Sql, q: StatsQuery, *extra: str) -> str:
    clauses = list(extra)
    if q.start is not None:
        clauses.append(f"f.event_ts >= {sql.param(q.start)}")
    if q.end is not None:
        clauses.append(f"f.event_ts < {sql.param(q.end)}")
    if q.model is not None:
        clauses.append(f"f.model_name = {sql.param(q.model)}")
    if q.user is not None:
        clauses.append(f"u.user_name = {sql.param(q.user)}")
    return ("WHERE " + " AND ".join(clauses)) if clauses else ""


def _key_expr(group_by: str, pg: bool) -> str:
    class_id_text = "c.class_id::text" if pg else "CAST(c.class_id AS TEXT)"
    return {
        "minute": "t.minute_ts",
        "hour": "t.hour_ts",
        "day": "t.day_date",
        "class": f"coalesce(c.class_name, {class_id_text})",
        "user": "u.user_name",
        "model": "f.model_name",
    }[group_by]


def _groups_sql(q: StatsQuery, dialect: str) -> tuple[str, list[Any]]:
    sql = _Sql(dialect)
    key = _key_expr(q.group_by, sql.pg)
    where = _where(sql, q)
    if sql.pg:
        fractions = ", ".join(str(p) for _, p in PERCENTILES)
        text = f"""
SELECT {key} AS k,
       sum(f.request_count) AS requests,
       coalesce(sum(f.request_count) FILTER (WHERE f.status >= 400), 0) AS errors,
       percentile_disc(ARRAY[{fractions}]::float8[]) WITHIN GROUP (ORDER BY f.latency_ms) AS pct,
       avg(f.batch_size::float8) AS mean_batch_size
{_FROM} {where}
GROUP BY 1
"""
        return text, sql.params
    # Latencies rank first within their group (NULLs last), so rank <= cnt covers exactly the
    # non-null ones; one pass, no self-join.
    picks = ",\n       ".join(
        f"min(CASE WHEN lat IS NOT NULL AND rn >= {p!r} * cnt THEN lat END) AS {name}" for name, p in PERCENTILES
    )
    text = f"""
WITH base AS (
    SELECT {key} AS k, f.request_count AS n, f.status AS status, f.latency_ms AS lat, f.batch_size AS bs
    {_FROM} {where}
),
ranked AS (
    SELECT k, n, status, lat, bs,
           row_number() OVER (PARTITION BY k ORDER BY lat IS NULL, lat) AS rn,
           count(lat) OVER (PARTITION BY k) AS cnt
    FROM base
)
SELECT k, sum(n) AS requests, coalesce(sum(CASE WHEN status >= 400 THEN n END), 0) AS errors,
       {picks},
       avg(CAST(bs AS REAL)) AS mean_batch_size
FROM ranked GROUP BY k
"""
    return text, sql.params


def _histogram_sql(q: StatsQuery, dialect: str) -> tuple[str, list[Any]]:
    sql = _Sql(dialect)
    where = _where(sql, q, "f.batch_size IS NOT NULL")
    return f"SELECT f.batch_size, sum(f.request_count) {_FROM} {where} GROUP BY f.batch_size", sql.params


def _classes_sql(q: StatsQuery, dialect: str) -> tuple[str, list[Any]]:
    sql = _Sql(dialect)
    where = _where(sql, q, "f.class_key IS NOT NULL")
    return (
        f"SELECT c.class_id, c.class_name, sum(f.request_count) {_FROM} {where} GROUP BY c.class_id, c.class_name",
        sql.params,
    )


def _time_key(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_ts(value) if "T" in value else date.fromisoformat(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).isoformat()
    raise TypeError(f"unexpected time key {value!r}")


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _group(row: tuple[Any, ...], pg: bool, time_group: bool) -> dict[str, Any]:
    if pg:
        key, requests, errors, pct, mean_bs = row
        pct = list(pct) if pct is not None else [None] * len(PERCENTILES)
    else:
        key, requests, errors, *pct, mean_bs = row
    return {
        "key": _time_key(key) if time_group else key,
        "requests": int(requests),
        "errors": int(errors),
        "latency_ms": {name: _float(v) for (name, _), v in zip(PERCENTILES, pct, strict=True)},
        "mean_batch_size": _float(mean_bs),
    }


async def query_stats(store: StatsSource, q: StatsQuery) -> dict[str, Any]:
    """``{"groups": [...], "batch_size_histogram": {...}, "top_classes": [...]}`` for ``q``.

    Groups: time groups ascending by key (ISO 8601 in UTC, the start of the minute/hour/day);
    others by requests descending, then key (a null key — no model, no class — last).
    ``errors`` counts attempts answered with status >= 400.  Raises ``StoreUnavailable`` /
    ``StoreError`` when the store cannot answer.
    """
    dialect = store.kind
    pg = dialect == "postgres"
    time_group = q.group_by in TIME_GROUPS

    groups = [_group(row, pg, time_group) for row in await store.fetch(*_groups_sql(q, dialect))]
    if time_group:
        groups.sort(key=lambda g: (g["key"] is None, g["key"] or ""))
    else:
        groups.sort(key=lambda g: (-g["requests"], g["key"] is None, str(g["key"] or "")))

    histogram_rows = sorted(await store.fetch(*_histogram_sql(q, dialect)))
    histogram = {str(int(size)): int(count) for size, count in histogram_rows}

    class_rows = await store.fetch(*_classes_sql(q, dialect))
    class_rows.sort(key=lambda r: (-int(r[2]), int(r[0]), r[1] is None, r[1] or ""))
    top_classes = [
        {"class_id": int(class_id), "label": label, "count": int(count)}
        for class_id, label, count in class_rows[: q.top_classes]
    ]
    return {"groups": groups, "batch_size_histogram": histogram, "top_classes": top_classes}
