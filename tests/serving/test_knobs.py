"""Model knobs become typed configs; the simulated device's cost model."""

import asyncio
import dataclasses

import numpy as np
import pytest

from batchserve.batching import BatchingConfig
from batchserve.batching.cost import CostModel
from batchserve.model_repo.errors import ModelLoadError
from batchserve.serving.knobs import (
    KNOBS,
    KnobOverrides,
    ModelSettings,
    RequestLimits,
    RoutingKnobs,
    RuntimeKnobs,
    per_model_env,
)
from batchserve.serving.simulated import SimulatedDevice


def test_knobs_are_the_fields_of_the_typed_configs() -> None:
    fields = [f.name for config in (BatchingConfig, RequestLimits, RuntimeKnobs, RoutingKnobs)
              for f in dataclasses.fields(config)]
    assert list(KNOBS) == fields
    assert all(knob.help for knob in KNOBS.values())


def test_knobs_split_into_batching_limits_and_runtime() -> None:
    settings = ModelSettings.from_knobs(
        {"max_batch_size": 8, "preferred_batch_sizes": [4, 8], "default_timeout_ms": 100, "intra_op_threads": 2}
    )
    assert settings.batching.max_batch_size == 8 and settings.batching.preferred_batch_sizes == (4, 8)
    assert settings.limits.default_timeout_ms == 100.0 and settings.limits.max_timeout_ms == 60_000.0
    assert settings.runtime.intra_op_threads == 2


def test_misspelt_or_bad_knobs_are_refused_by_name() -> None:
    with pytest.raises(ModelLoadError, match="max_bach_size"):
        ModelSettings.from_knobs({"max_bach_size": 4})
    with pytest.raises(ModelLoadError, match="max_batch_size"):
        ModelSettings.from_knobs({"max_batch_size": 0})
    with pytest.raises(ModelLoadError, match="max_timeout_ms"):
        ModelSettings.from_knobs({"max_timeout_ms": -1})
    with pytest.raises(ModelLoadError, match="intra_op_threads"):
        ModelSettings.from_knobs({"intra_op_threads": "two"})
    with pytest.raises(ValueError, match="max_bach_size"):
        KnobOverrides({"max_bach_size": 4})


def test_per_model_environment_is_typed_and_names_a_bad_variable() -> None:
    env = {"BATCHSERVE_MODEL_TINY_MAX_BATCH_SIZE": "16", "BATCHSERVE_MODEL_TINY_PREFERRED_BATCH_SIZES": "8, 16",
           "BATCHSERVE_MODEL_OTHER_MAX_BATCH_SIZE": "2"}
    assert per_model_env("tiny", env) == {"max_batch_size": 16, "preferred_batch_sizes": (8, 16)}
    with pytest.raises(ValueError, match="BATCHSERVE_MODEL_TINY_MAX_QUEUE_SIZE"):
        per_model_env("tiny", {"BATCHSERVE_MODEL_TINY_MAX_QUEUE_SIZE": "lots"})


@pytest.mark.parametrize(
    ("text", "fixed", "per"), [("8+0.25", 8.0, 0.25), ("40ms+2ms", 40.0, 2.0), (" 5 + 1 ", 5.0, 1.0)]
)
def test_cost_model_parses(text: str, fixed: float, per: float) -> None:
    cost = CostModel.parse(text)
    assert (cost.fixed_ms, cost.per_sample_ms) == (fixed, per)


@pytest.mark.parametrize("text", ["", "8", "8+", "a+b", "-1+2", "8*0.25"])
def test_bad_cost_model_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="A\\+B"):
        CostModel.parse(text)


def test_cost_model_ceiling() -> None:
    assert CostModel(8, 0.25).max_throughput(32) == pytest.approx(2000.0)


async def test_simulated_device_books_batches_back_to_back_and_answers_per_image() -> None:
    device = SimulatedDevice(CostModel(20, 0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    dark, light = np.full((3, 224, 224), -0.9, np.float32), np.full((3, 224, 224), 0.7, np.float32)
    first, second = await asyncio.gather(device([dark]), device([light, dark]))
    # Two batches on one serial device: the second is booked after the first, never alongside.
    assert device.device.busy_s == pytest.approx(0.040)
    assert device.device.free_at - started >= 0.040  # in parallel they would end ~20 ms after the start
    assert first[0].argmax() == second[1].argmax() != second[0].argmax()
