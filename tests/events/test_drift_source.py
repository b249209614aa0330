"""A drift reference counted from the event store: the same numbers in SQLite and Postgres."""

from __future__ import annotations

from datetime import timedelta

import pytest

from batchserve.events.drift_source import NoAnswers, ReferencePeriod, reference_from_store
from batchserve.events.store import EventStore
from tests.events.event_helpers import T0, WITHOUT_IMAGE, make_event


async def test_counts_classes_confidence_and_sizes_of_the_models_answers_in_the_period(store: EventStore) -> None:
    sizes = [(100, 80), (640, 480), (4000, 3000), (300, 1200)]  # short sides: <224, 224-511, >=2048, 224-511
    answers = [make_event(i, model="m", class_id=i % 3, score=0.3 if i % 4 == 0 else 0.9,
                          width=sizes[i % 4][0], height=sizes[i % 4][1]) for i in range(12)]
    others = [
        make_event(20, model="other", class_id=7),  # another model
        make_event(21, model="m", class_id=None, class_label=None, score=None, status=400, error_code="invalid_image"),
        make_event(22, model="m", ts=T0 - timedelta(minutes=1)),  # before the period
        make_event(23, model="m", ts=T0 + timedelta(hours=1)),  # at its end: excluded
        make_event(24, model="m", status=503, error_code="queue_full", **WITHOUT_IMAGE),
    ]
    await store.write(answers + others)

    reference = await reference_from_store(store, ReferencePeriod("m", T0, T0 + timedelta(hours=1), 0.5))

    assert reference.model == "m"
    assert reference.answers == 12
    assert reference.classes == {0: 4, 1: 4, 2: 4}
    assert reference.mean_confidence == pytest.approx((3 * 0.3 + 9 * 0.9) / 12)
    assert reference.low_confidence_ratio == pytest.approx(3 / 12)
    assert reference.short_sides == {"<224": 3, "224-511": 6, ">=2048": 3}
    assert reference.brightness_mean is None  # the store does not keep pixels


async def test_a_period_without_enough_answers_is_refused(store: EventStore) -> None:
    await store.write([make_event(i, model="m") for i in range(3)])
    period = ReferencePeriod("m", T0, T0 + timedelta(hours=1))
    with pytest.raises(NoAnswers, match="3 answer"):
        await reference_from_store(store, period, min_answers=4)
    with pytest.raises(NoAnswers, match="0 answer"):
        await reference_from_store(store, ReferencePeriod("nobody", T0, T0 + timedelta(hours=1)))
