from __future__ import annotations

import pytest

from batchserve.model_repo.providers import CPU, CUDA, TENSORRT, choose_providers, provider_options

GPU_BUILD = [TENSORRT, CUDA, CPU]
CUDA_BUILD = [CUDA, CPU]
CPU_BUILD = ["AzureExecutionProvider", CPU]


@pytest.mark.parametrize(
    ("requested", "available", "expected"),
    [
        (None, GPU_BUILD, [CUDA, CPU]),  # TensorRT only when asked for
        (None, CPU_BUILD, [CPU]),
        ([TENSORRT, CUDA, CPU], GPU_BUILD, [TENSORRT, CUDA, CPU]),
        ([TENSORRT, CUDA, CPU], CUDA_BUILD, [CUDA, CPU]),
        ([TENSORRT, CUDA, CPU], CPU_BUILD, [CPU]),
        ([TENSORRT], GPU_BUILD, [TENSORRT, CPU]),  # CPU always appended as the fallback
        ([CUDA], CUDA_BUILD, [CUDA, CPU]),
        ([CPU], GPU_BUILD, [CPU]),
        ([], GPU_BUILD, [CPU]),
        ([CPU, CUDA], CUDA_BUILD, [CUDA, CPU]),  # CPU first would starve CUDA: reordered
        ([CUDA, TENSORRT], GPU_BUILD, [TENSORRT, CUDA, CPU]),
        ([CUDA, CUDA, CPU, CPU], CUDA_BUILD, [CUDA, CPU]),  # duplicates collapse
        ((CUDA, CPU), (CUDA, CPU), [CUDA, CPU]),  # any sequence type
    ],
)
def test_choose_providers(requested: list[str] | None, available: list[str], expected: list[str]) -> None:
    assert choose_providers(requested, available) == expected


def test_unknown_provider_names_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError) as info:
        choose_providers(["CudaExecutionProvider", CPU], GPU_BUILD)
    message = str(info.value)
    assert "'CudaExecutionProvider'" in message
    for name in (TENSORRT, CUDA, CPU):
        assert name in message


def test_a_single_string_is_not_a_list_of_names() -> None:
    with pytest.raises(TypeError):
        choose_providers(CUDA, GPU_BUILD)  # type: ignore[arg-type]


def test_cuda_options() -> None:
    assert provider_options(CUDA) == {
        "device_id": 0,
        "cudnn_conv_algo_search": "HEURISTIC",
        "arena_extend_strategy": "kSameAsRequested",
    }
    assert provider_options(CUDA, device_id=2)["device_id"] == 2


def test_tensorrt_options_with_an_engine_cache() -> None:
    options = provider_options(TENSORRT, trt_engine_cache_path="/var/cache/trt")
    assert options == {
        "device_id": 0,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": "/var/cache/trt",
    }


def test_tensorrt_options_without_a_cache() -> None:
    options = provider_options(TENSORRT, trt_engine_cache_path=None, trt_fp16=False)
    assert options["trt_engine_cache_enable"] is False
    assert "trt_engine_cache_path" not in options
    assert options["trt_fp16_enable"] is False


def test_cpu_and_unknown_options() -> None:
    assert provider_options(CPU) == {}
    with pytest.raises(ValueError, match="known"):
        provider_options("NotAProvider")
