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


def test_from_mapping_parses_environment_strings_over_a_base() -> None:
    base = BatchingConfig(max_batch_size=8, max_inflight_batches=1)
    config = BatchingConfig.from_mapping(
        {"max_queue_delay_ms": "2.5", "preferred_batch_sizes": "8, 4", "max_queue_size": "64"}, base=base
    )
    assert config == BatchingConfig(
        max_batch_size=8,
        max_queue_delay_ms=2.5,
        preferred_batch_sizes=(4, 8),
        max_queue_size=64,
        max_inflight_batches=1,
    )


def test_from_mapping_takes_typed_values_as_they_are() -> None:
    config = BatchingConfig.from_mapping({"max_batch_size": 4, "preferred_batch_sizes": [2, 4]})
    assert config.max_batch_size == 4 and config.preferred_batch_sizes == (2, 4)


def test_from_mapping_rejects_unknown_and_unparsable_knobs() -> None:
    with pytest.raises(ValueError, match="unknown batching setting.*max_batch"):
        BatchingConfig.from_mapping({"max_batch": 4})
    with pytest.raises(ValueError, match="max_batch_size: cannot parse 'lots'"):
        BatchingConfig.from_mapping({"max_batch_size": "lots"})
    with pytest.raises(ValueError, match="larger than max_batch_size"):
        BatchingConfig.from_mapping({"max_batch_size": "4", "preferred_batch_sizes": "8"})


def test_knob_names_match_the_contract() -> None:
    assert BatchingConfig.knobs() == (
        "max_batch_size",
        "max_queue_delay_ms",
        "preferred_batch_sizes",
        "max_queue_size",
        "max_inflight_batches",
    )
