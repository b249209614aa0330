"""`GET /v1/stats`: analytics computed in SQL from the event star schema.

Every query scans a bounded window (`from` defaults to `--stats-default-window-hours` before `to`,
and a window wider than `--stats-max-window-days` is refused) on the analytics' own connections,
each statement bounded by `--stats-statement-timeout-ms`; none of it touches the event writer.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from batchserve.events.analytics import GroupBy, StatsQuery, bounded_window, query_stats
from batchserve.events.errors import StatsBusy, StatsTimeout
from batchserve.server.errors import V1_HANDLERS
from batchserve.server.state import AppState
from batchserve.serving.errors import ServeError, retry_after

log = logging.getLogger("batchserve.stats")


class EventsDisabled(ServeError):
    status, code = 404, "events_disabled"


class StatsTimedOut(ServeError):
    """The database cancelled the query at its statement timeout: asking again the same way will not help."""

    status, code = 504, "stats_timeout"


class StatsUnavailable(ServeError):
    """Every analytics connection stayed busy: a moment later one may be free."""

    status, code = 503, "stats_busy"


@get("/v1/stats", summary="Requests, errors, latency percentiles, batch sizes and top classes", tags=["v1"],
     exception_handlers=V1_HANDLERS,
     description="Computed over [from, to): `to` defaults to now, `from` to `--stats-default-window-hours` "
                 "(24) before `to`; a window wider than `--stats-max-window-days` (31) answers 422. A query "
                 "past `--stats-statement-timeout-ms` answers 504 `stats_timeout`; all analytics connections "
                 "busy answers 503 `stats_busy`.")
async def stats(
    app_state: NamedDependency[AppState],
    from_: Annotated[datetime | None, QueryParameter(name="from", description="ISO 8601 start (inclusive)")] = None,
    to: Annotated[datetime | None, QueryParameter(description="ISO 8601 end (exclusive)")] = None,
    model: FromQuery[str | None] = None,
    user: FromQuery[str | None] = None,
    group_by: FromQuery[GroupBy] = "minute",
) -> dict[str, Any]:
    analytics = app_state.serving.analytics
    if analytics is None:
        raise EventsDisabled("events are off on this server (--no-events), so there are no statistics")
    limits = app_state.config.events
    start, end = bounded_window(
        from_,
        to,
        now=datetime.now(UTC),
        default=timedelta(hours=limits.stats_default_window_hours),
        maximum=timedelta(days=limits.stats_max_window_days),
    )
    query = StatsQuery(start=start, end=end, model=model, user=user, group_by=group_by)
    try:
        return await query_stats(analytics, query)
    except StatsTimeout as exc:
        log.warning("statistics query over %s .. %s cancelled: %s", start.isoformat(), end.isoformat(), exc)
        raise StatsTimedOut(
            f"the statistics query ran longer than {limits.stats_statement_timeout_ms} ms "
            "(--stats-statement-timeout-ms) and was cancelled; ask for a narrower window (from/to) "
            "or filter by model or user"
        ) from exc
    except StatsBusy as exc:
        log.warning("statistics query refused: %s", exc)
        raise StatsUnavailable(
            f"every connection reserved for statistics stayed busy for {limits.stats_statement_timeout_ms} ms; "
            "retry shortly",
            headers=retry_after(1),
        ) from exc
