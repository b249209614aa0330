from __future__ import annotations

import dataclasses

import pytest

from batchserve.batching import BatchingConfig


def test_defaults_are_valid_and_documented_values() -> None:
    config = BatchingConfig()
    assert config.max_batch_size == 32
    assert config.max_queue_delay_ms == 0.0
    assert config.preferred_batch_sizes == ()
    assert config.max_queue_size == 256
    assert config.max_inflight_batches == 2


def test_preferred_sizes_are_sorted_and_stored_as_tuple() -> None:
    config = BatchingConfig(max_batch_size=16, preferred_batch_sizes=[16, 4, 8])  # type: ignore[arg-type]
    assert config.preferred_batch_sizes == (4, 8, 16)
    hash(config)  # frozen and hashable even when built from a list


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"max_batch_size": 2.5}, "max_batch_size must be an integer"),
        ({"max_batch_size": True}, "max_batch_size must be an integer"),
        ({"max_queue_size": 0}, "max_queue_size must be >= 1"),
        ({"max_inflight_batches": 0}, "max_inflight_batches must be >= 1"),
        ({"max_queue_delay_ms": -1}, "max_queue_delay_ms must be a finite number >= 0"),
        ({"max_queue_delay_ms": float("nan")}, "max_queue_delay_ms must be a finite number >= 0"),
        ({"max_queue_delay_ms": float("inf")}, "max_queue_delay_ms must be a finite number >= 0"),
        ({"max_queue_delay_ms": "5"}, "max_queue_delay_ms must be a number"),
        ({"preferred_batch_sizes": (4, 64)}, "larger than max_batch_size=32"),
        ({"preferred_batch_sizes": (4, 4)}, "must not repeat"),
        ({"preferred_batch_sizes": (0,)}, "preferred_batch_sizes must be >= 1"),
        ({"preferred_batch_sizes": "8"}, "sequence of integers"),
        ({"preferred_batch_sizes": 8}, "sequence of integers"),
    ],
)
def test_bad_values_raise_value_error_naming_the_knob(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        BatchingConfig(**kwargs)  # type: ignore[arg-type]


def test_replace_revalidates() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        dataclasses.replace(BatchingConfig(), max_batch_size=-3)


def test_knob_names_match_the_contract() -> None:
    assert tuple(f.name for f in dataclasses.fields(BatchingConfig)) == (
        "max_batch_size",
        "max_queue_delay_ms",
        "preferred_batch_sizes",
        "max_queue_size",
        "max_inflight_batches",
        "latency_slo_ms",
    )
