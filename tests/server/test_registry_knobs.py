"""Model knobs become typed configs; the simulated device's cost model."""

import asyncio

import numpy as np
import pytest

from batchserve.model_repo.errors import ModelLoadError
from batchserve.server.registry import split_knobs
from batchserve.batching.cost import CostModel
from batchserve.server.simulated import SimulatedDevice


def test_knobs_split_into_batching_limits_and_threads() -> None:
    batching, limits, threads = split_knobs(
        {"max_batch_size": 8, "preferred_batch_sizes": [4, 8], "default_timeout_ms": 100, "intra_op_threads": 2}
    )
    assert batching.max_batch_size == 8 and batching.preferred_batch_sizes == (4, 8)
    assert limits.default_timeout_ms == 100.0 and limits.max_timeout_ms == 60_000.0
    assert threads == 2


def test_env_strings_are_parsed_and_misspelt_or_bad_knobs_refused() -> None:
    batching, _, _ = split_knobs({"max_batch_size": "16", "preferred_batch_sizes": "8,16"})
    assert (batching.max_batch_size, batching.preferred_batch_sizes) == (16, (8, 16))
    with pytest.raises(ModelLoadError, match="max_bach_size"):
        split_knobs({"max_bach_size": 4})
    with pytest.raises(ModelLoadError, match="max_batch_size"):
        split_knobs({"max_batch_size": 0})


@pytest.mark.parametrize(("text", "fixed", "per"), [("8+0.25", 8.0, 0.25), ("40ms+2ms", 40.0, 2.0), (" 5 + 1 ", 5.0, 1.0)])
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
