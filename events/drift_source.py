"""A drift reference counted from the event store: one model's successful answers over a time range.

Two aggregate queries (per class, per image-size bucket), so a reference over millions of events
moves a few hundred rows, not the events. Both dialects count the same: an answer is a fact row of
the model with a class and a score and a status under 400; sizes come from the image dimension
(absent for samples sent as tensors).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batchserve.events.analytics import StatsSource
from batchserve.events.drift_reference import SHORT_SIDE_BUCKETS, SHORT_SIDE_EDGES, DriftReference, now_iso
from batchserve.events.store_sqlite import format_ts

__all__ = ["NoAnswers", "ReferencePeriod", "reference_from_store"]


class NoAnswers(Exception):
    """The period holds too few answers of the model to make a reference of."""


@dataclass(frozen=True)
class ReferencePeriod:
    """`start` inclusive, `end` exclusive; naive times are UTC."""

    model: str
    start: datetime
    end: datetime
    confidence_threshold: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _utc(self.start))
        object.__setattr__(self, "end", _utc(self.end))
        if self.start >= self.end:
            raise ValueError(f"the period must end after it starts "
                             f"({self.start.isoformat()} .. {self.end.isoformat()})")
        if not 0.0 < self.confidence_threshold < 1.0:
            raise ValueError(f"confidence_threshold must be between 0 and 1, not {self.confidence_threshold:g}")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Params:
    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgres"
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        if isinstance(value, datetime) and not self.pg:
            value = format_ts(value)
        self.values.append(value)
        return f"${len(self.values)}" if self.pg else "?"


def _answers_where(p: _Params, period: ReferencePeriod) -> str:
    return (f"f.model_name = {p(period.model)} AND f.event_ts >= {p(period.start)} AND f.event_ts < {p(period.end)} "
            "AND f.status < 400 AND f.class_key IS NOT NULL AND f.score IS NOT NULL")


def _classes_sql(period: ReferencePeriod, dialect: str) -> tuple[str, list[Any]]:
    p = _Params(dialect)
    low = p(period.confidence_threshold)  # placeholders in text order: SQLite's are positional
    where = _answers_where(p, period)
    return (f"""
SELECT c.class_id, count(*), sum(f.score), sum(CASE WHEN f.score < {low} THEN 1 ELSE 0 END)
FROM api_event_fact f JOIN class_dim c ON c.class_key = f.class_key
WHERE {where}
GROUP BY c.class_id
""", p.values)


def _sizes_sql(period: ReferencePeriod, dialect: str) -> tuple[str, list[Any]]:
    p = _Params(dialect)
    where = _answers_where(p, period)
    short = "least(i.width, i.height)" if p.pg else "min(i.width, i.height)"
    cases = " ".join(f"WHEN {short} < {edge} THEN {index}" for index, edge in enumerate(SHORT_SIDE_EDGES))
    return (f"""
SELECT CASE {cases} ELSE {len(SHORT_SIDE_EDGES)} END AS bucket, count(*)
FROM api_event_fact f JOIN image_dim i ON i.image_key = f.image_key
WHERE {where} AND i.width IS NOT NULL AND i.height IS NOT NULL
GROUP BY 1
""", p.values)


async def reference_from_store(store: StatsSource, period: ReferencePeriod, *, min_answers: int = 1) -> DriftReference:
    """Raises NoAnswers when the period holds fewer than `min_answers` answers of the model, and
    StoreUnavailable / StoreError when the store cannot answer."""
    classes: dict[int, int] = {}
    score_sum = 0.0
    low = 0
    for class_id, count, scores, under in await store.fetch(*_classes_sql(period, store.kind)):
        classes[int(class_id)] = int(count)
        score_sum += float(scores)
        low += int(under)
    answers = sum(classes.values())
    if answers < max(1, min_answers):
        raise NoAnswers(f"{answers} answer(s) of model {period.model!r} between {period.start.isoformat()} and "
                        f"{period.end.isoformat()}; a reference needs at least {max(1, min_answers)}")
    short_sides = {SHORT_SIDE_BUCKETS[int(bucket)]: int(count)
                   for bucket, count in await store.fetch(*_sizes_sql(period, store.kind))}
    return DriftReference(
        model=period.model,
        answers=answers,
        classes=dict(sorted(classes.items())),
        mean_confidence=min(1.0, max(0.0, score_sum / answers)),
        confidence_threshold=period.confidence_threshold,
        low_confidence_ratio=low / answers,
        short_sides={label: short_sides[label] for label in SHORT_SIDE_BUCKETS if label in short_sides},
        source=f"event store, {period.start.isoformat()} to {period.end.isoformat()}",
        created_at=now_iso(),
    )
