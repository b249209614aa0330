"""Relative profiles without Locust: capacity, the constant-throughput plan and the ratio targets."""

from __future__ import annotations

import math

import pytest

from batchserve.loadtest.calibration import (
    LATENCY_HEADROOM,
    MAX_USERS_PER_CALIBRATION_USER,
    Calibration,
    plan_pacing,
)
from batchserve.loadtest.report import Measured, evaluate_relative, missed, table
from batchserve.loadtest.targets import Relative, Targets


def _measured(requests: int = 400, failures: int = 0, rps: float = 40.0, p99_ms: float | None = 650.0) -> Measured:
    return Measured(requests=requests, failures=failures, rps=rps, p50_ms=None if p99_ms is None else 380.0,
                    p95_ms=p99_ms, p99_ms=p99_ms, max_ms=p99_ms)


def test_capacity_counts_successful_requests_only() -> None:
    # Fast error answers would otherwise pass for throughput.
    assert Calibration(16, 10, _measured(requests=400, failures=100, rps=40.0)).capacity_rps == 30.0
    assert Calibration(16, 10, _measured(requests=0, rps=0.0, p99_ms=None)).capacity_rps == 0.0


def test_pacing_offers_the_fraction_and_leaves_room_for_latency() -> None:
    calibration = Calibration(16, 10, _measured(rps=40.0, p99_ms=650.0))
    pacing = plan_pacing(calibration, 0.8)
    assert pacing.offered_rps == pytest.approx(32.0)
    assert pacing.users * pacing.user_rps == pytest.approx(pacing.offered_rps)
    # Each user's interval covers twice the p99 seen at saturation, and no more users than that needs.
    interval_s = 1 / pacing.user_rps
    assert interval_s >= LATENCY_HEADROOM * 0.650
    assert pacing.users == math.ceil(32.0 * LATENCY_HEADROOM * 0.650) == 42


def test_pacing_falls_back_to_littles_law_without_a_percentile() -> None:
    calibration = Calibration(8, 10, _measured(rps=100.0, p99_ms=None))  # mean latency 8 / 100 = 80 ms
    assert calibration.latency_ms == pytest.approx(80.0)
    assert plan_pacing(calibration, 1.0).users == math.ceil(100 * LATENCY_HEADROOM * 0.080)


def test_pacing_users_are_bounded() -> None:
    fast = plan_pacing(Calibration(4, 10, _measured(rps=2.0, p99_ms=1.0)), 0.5)
    assert (fast.users, fast.user_rps) == (1, 1.0)  # never zero users
    slow = plan_pacing(Calibration(4, 10, _measured(rps=1000.0, p99_ms=60_000.0)), 1.0)
    assert slow.users == 4 * MAX_USERS_PER_CALIBRATION_USER
    assert slow.users * slow.user_rps == pytest.approx(1000.0)


def test_no_capacity_no_plan() -> None:
    with pytest.raises(ValueError, match="no capacity"):
        plan_pacing(Calibration(4, 10, _measured(requests=10, failures=10)), 0.8)


def test_achieved_and_capacity_ratios() -> None:
    targets = Targets(min_achieved_ratio=0.95, min_capacity_ratio=0.8)
    measured = _measured(requests=300, failures=15, rps=32.0)  # 30.4 successful requests/s
    checks = evaluate_relative(targets, Relative(rate=0.8, reference_rps=50.0), 40.0, 32.0, measured)
    assert [(c.metric, c.measured) for c in checks] == [("achieved/offered", pytest.approx(0.95)),
                                                        ("capacity/reference", pytest.approx(0.8))]
    assert not missed(checks)
    low = evaluate_relative(targets, Relative(rate=0.8, reference_rps=190.0), 40.0, 32.0, measured)
    assert [c.describe_miss() for c in missed(low)] == ["capacity/reference: 0.211, target >= 0.8"]
    assert "(40.0 of 190.0 requests/s)" in table(low)


def test_capacity_ratio_is_skipped_without_a_reference() -> None:
    checks = evaluate_relative(Targets(min_capacity_ratio=0.8), Relative(rate=0.8), 40.0, 32.0, _measured())
    assert checks[0].skipped and checks[0].passed and not missed(checks)
    assert "SKIP  (no reference (--reference-rps or reference_rps))" in table(checks)


def test_a_phase_that_did_not_run_misses_the_achieved_ratio() -> None:
    checks = evaluate_relative(Targets(min_achieved_ratio=0.5, min_capacity_ratio=0.1),
                               Relative(rate=0.8, reference_rps=100.0), 0.0, None, Measured.nothing())
    assert [c.metric for c in missed(checks)] == ["achieved/offered", "capacity/reference"]
    assert checks[0].describe_miss() == "achieved/offered: nothing measured, target >= 0.5"
