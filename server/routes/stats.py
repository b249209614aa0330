"""`GET /v1/stats`: analytics computed in SQL from the event star schema."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from batchserve.events.analytics import GroupBy, StatsQuery, query_stats
from batchserve.server.errors import V1_HANDLERS
from batchserve.server.state import AppState
from batchserve.serving.errors import ServeError


class EventsDisabled(ServeError):
    status, code = 404, "events_disabled"


@get("/v1/stats", summary="Requests, errors, latency percentiles, batch sizes and top classes", tags=["v1"],
     exception_handlers=V1_HANDLERS)
async def stats(
    app_state: NamedDependency[AppState],
    from_: Annotated[datetime | None, QueryParameter(name="from", description="ISO 8601 start (inclusive)")] = None,
    to: Annotated[datetime | None, QueryParameter(description="ISO 8601 end (exclusive)")] = None,
    model: FromQuery[str | None] = None,
    user: FromQuery[str | None] = None,
    group_by: FromQuery[GroupBy] = "minute",
) -> dict[str, Any]:
    writer = app_state.serving.writer
    if writer is None:
        raise EventsDisabled("events are off on this server (--no-events), so there are no statistics")
    return await query_stats(writer.store, StatsQuery(start=from_, end=to, model=model, user=user, group_by=group_by))
