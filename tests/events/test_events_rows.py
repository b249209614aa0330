"""Pure pieces: the PII policy, sanitising events into rows, config validation, the key cache."""

from __future__ import annotations

import logging
import math
import uuid
from datetime import UTC, datetime

import pytest

from batchserve.events.config import EventsConfig, redact_url
from batchserve.events.errors import EventsConfigError
from batchserve.events.keycache import KeyCache
from batchserve.events.pii import apply_pii, truncate_ip
from batchserve.events.ratelog import RateLimitedLog
from batchserve.events.rows import canonical_event_id, natural_key, prepare
from tests.events.event_helpers import WITHOUT_IMAGE, make_event


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("10.1.2.3", "10.1.2.0"),
        ("2001:db8:abcd:1234:5678::1", "2001:db8:abcd::"),
        ("2001:DB8:ABCD:FFFF::", "2001:db8:abcd::"),
        ("::ffff:198.51.100.9", "198.51.100.0"),  # IPv4-mapped counts as IPv4
        ("fe80::1:2:3:4%eth0", "fe80::"),  # the zone id names our interface: dropped
        (" 192.0.2.200 ", "192.0.2.0"),
        ("testclient", None),  # not an address: cannot be truncated, so not kept
        ("", None),
        (None, None),
    ],
)
def test_truncate_ip(raw: str | None, expected: str | None) -> None:
    assert truncate_ip(raw) == expected


@pytest.mark.parametrize("raw", ["203.0.113.77", "2001:db8:abcd:1234::1", "::ffff:1.2.3.4"])
def test_truncation_is_idempotent(raw: str) -> None:
    once = truncate_ip(raw)
    assert once is not None
    assert truncate_ip(once) == once


def test_apply_pii_modes() -> None:
    event = make_event(client_ip="2001:db8:1:2::99", user_agent="Mozilla/5.0")
    assert apply_pii(event, "full") is event
    truncated = apply_pii(event, "truncated")
    assert (truncated.client_ip, truncated.user_agent) == ("2001:db8:1::", "Mozilla/5.0")
    off = apply_pii(event, "off")
    assert (off.client_ip, off.user_agent) == (None, None)
    assert off.request_id == event.request_id
    with pytest.raises(ValueError, match="unknown PII mode"):
        apply_pii(event, "partial")


def test_prepare_splits_into_unique_dimensions() -> None:
    events = [make_event(i) for i in range(40)]
    batch = prepare(events)
    assert len(batch.facts) == 40
    assert len(batch.users) == 40  # one per (user, client ip, user agent): every ip differs
    assert {u.user_name for u in batch.users.values()} == {"key-0", "key-1", "key-2"}
    assert len(batch.images) == 4
    assert len(batch.classes) == 5
    # 40 events 7 s apart span 5 minutes starting on a minute boundary
    assert sorted(t.minute_ts.minute for t in batch.times.values()) == [0, 1, 2, 3, 4]
    t = batch.times[datetime(2024, 5, 1, 12, 3, tzinfo=UTC)]
    assert (t.hour, t.day, t.weekday, t.month, t.year) == (12, 1, 3, 5, 2024)  # a Wednesday
    assert t.hour_ts == datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_prepare_drops_repeated_event_ids_within_a_batch() -> None:
    event = make_event(1)
    same_id_other_form = make_event(2, event_id=str(uuid.UUID(event.event_id)))
    batch = prepare([event, same_id_other_form, make_event(3)])
    assert len(batch.facts) == 2
    assert batch.facts[0].request_id == "req-1"


def test_prepare_makes_every_value_fit_its_column(caplog: pytest.LogCaptureFixture) -> None:
    naive = datetime(2024, 5, 1, 12, 30, 15, 123456)
    event = make_event(
        event_id="not-a-uuid",
        ts=naive,
        user="bad\x00user",
        user_agent="x" * 5000,
        width=2**40,
        height="480",  # a caller's bug: wrong type
        score=math.nan,
        latency_ms=math.inf,
        batch_size=True,
        status=70000,
    )
    with caplog.at_level(logging.WARNING, logger="batchserve.events.rows"):
        batch = prepare([event])
    fact = batch.facts[0]
    assert fact.event_id == canonical_event_id("not-a-uuid")  # deterministic: replays still deduplicate
    uuid.UUID(fact.event_id)
    assert fact.event_ts == naive.replace(tzinfo=UTC)
    assert fact.event_ts.microsecond == 123456
    (user,) = batch.users.values()
    assert user.user_name == "baduser"
    assert user.user_agent is not None and len(user.user_agent) == 512
    (image,) = batch.images.values()
    assert (image.width, image.height) == (None, None)
    assert (fact.score, fact.latency_ms, fact.batch_size, fact.status) == (None, None, None, 0)
    assert "not a UUID" in caplog.text


def test_event_without_image_or_class_has_no_such_dimensions() -> None:
    event = make_event(status=415, error_code="unsupported_media_type", **WITHOUT_IMAGE)
    batch = prepare([event])
    assert batch.images == {} and batch.classes == {}
    assert batch.facts[0].image_nk is None and batch.facts[0].class_nk is None


def test_natural_key_separates_null_from_empty() -> None:
    assert natural_key("a", None, "x") != natural_key("a", "", "x")
    assert natural_key("a", None, "x") == natural_key("a", None, "x")
    assert len(natural_key("a")) == 16


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pii", "partial"),
        ("flush_interval_ms", 0),
        ("buffer_size", -1),
        ("flush_max_events", 1.5),
        ("store_timeout_s", 0),
        ("database_url", "mysql://x"),
        ("stats_statement_timeout_ms", 0),
        ("stats_max_connections", 0),
        ("stats_max_window_days", -1),
        ("dead_letter_max_bytes", 0),
    ],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(EventsConfigError, match=field.split("_")[0]):
        EventsConfig(**{field: value})


def test_config_refuses_a_default_statistics_window_wider_than_the_maximum() -> None:
    with pytest.raises(EventsConfigError, match="stats_default_window_hours"):
        EventsConfig(stats_default_window_hours=49, stats_max_window_days=2)
    assert EventsConfig(stats_default_window_hours=48, stats_max_window_days=2).stats_max_window_days == 2


def test_config_normalises_paths_and_redacts_passwords() -> None:
    config = EventsConfig(events_path="x/e.sqlite3", journal_dir="j")  # type: ignore[arg-type]
    assert config.events_path.name == "e.sqlite3" and config.journal_dir.name == "j"
    assert redact_url("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert redact_url("postgresql://app@db/x") == "postgresql://app@db/x"
    with pytest.raises(EventsConfigError) as info:
        EventsConfig(database_url="mysql://app:s3cret@db/x")
    assert "s3cret" not in str(info.value)


def test_key_cache_is_a_bounded_lru() -> None:
    cache = KeyCache(max_entries=3)
    cache.store("user", {b"a": 1, b"b": 2, b"c": 3})
    assert cache.lookup("user", [b"a"]) == {b"a": 1}  # a is now the most recent
    cache.store("user", {b"d": 4})  # evicts b, the least recent
    assert cache.lookup("user", [b"a", b"b", b"c", b"d"]) == {b"a": 1, b"c": 3, b"d": 4}
    assert cache.lookup("image", [b"a"]) == {}  # dimensions do not share keys
    assert len(cache) == 3


def test_rate_limited_log_counts_what_it_suppresses(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    logger = logging.getLogger("events.test.ratelog")
    ratelog = RateLimitedLog(logger, logging.ERROR, interval_s=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="batchserve.events.test.ratelog"):
        assert ratelog("dropped %d", 1)
        assert not ratelog("dropped %d", 2)
        assert not ratelog("dropped %d", 3)
        now[0] = 6.0
        assert ratelog("dropped %d", 4)
    assert [r.getMessage() for r in caplog.records] == ["dropped 1", "dropped 4 (2 similar messages suppressed)"]
