from __future__ import annotations

import pytest

from batchserve.batching import BatchingConfig
from batchserve.batching.policy import Decision, decide


def test_full_batch_goes_at_once_whatever_the_delay() -> None:
    config = BatchingConfig(max_batch_size=8, max_queue_delay_ms=1000)
    assert decide(config, 8, 0.0) == Decision(8)
    assert decide(config, 50, 0.0) == Decision(8)


def test_no_delay_dispatches_whatever_is_queued() -> None:
    config = BatchingConfig(max_batch_size=8)
    assert decide(config, 1, 0.0) == Decision(1)
    assert decide(config, 7, 0.0) == Decision(7)


def test_running_delay_waits_for_the_rest_of_it() -> None:
    config = BatchingConfig(max_batch_size=8, max_queue_delay_ms=10)
    decision = decide(config, 3, 0.004)
    assert decision.size == 0
    assert decision.wait_s == pytest.approx(0.006)


def test_expired_delay_dispatches_a_partial_batch() -> None:
    config = BatchingConfig(max_batch_size=8, max_queue_delay_ms=10)
    assert decide(config, 3, 0.010) == Decision(3)
    assert decide(config, 3, 5.0) == Decision(3)


def test_flush_ignores_the_delay() -> None:
    config = BatchingConfig(max_batch_size=8, max_queue_delay_ms=10_000)
    assert decide(config, 3, 0.0, flush=True) == Decision(3)


def test_preferred_sizes_without_delay_take_the_largest_that_fits() -> None:
    config = BatchingConfig(max_batch_size=32, preferred_batch_sizes=(4, 8, 16))
    assert decide(config, 20, 0.0) == Decision(16)
    assert decide(config, 9, 0.0) == Decision(8)
    assert decide(config, 4, 0.0) == Decision(4)
    # None filled: send what is there rather than hold a request with no delay configured.
    assert decide(config, 3, 0.0) == Decision(3)


def test_preferred_sizes_with_delay_wait_only_while_a_larger_preferred_size_is_reachable() -> None:
    config = BatchingConfig(max_batch_size=32, max_queue_delay_ms=10, preferred_batch_sizes=(4, 8))
    assert decide(config, 5, 0.001).size == 0  # 8 is still reachable: wait
    assert decide(config, 8, 0.001) == Decision(8)  # largest preferred reached: go now
    assert decide(config, 12, 0.001) == Decision(8)
    assert decide(config, 5, 0.010) == Decision(4)  # delay over: largest preferred that fits
    assert decide(config, 3, 0.010) == Decision(3)  # delay over, none fits: everything queued
