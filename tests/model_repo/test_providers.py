from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from batchserve.model_repo.providers import (
    CPU,
    CUDA,
    TENSORRT,
    choose_providers,
    is_qdq_graph,
    provider_options,
    session_providers,
)

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
        "trt_int8_enable": False,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": "/var/cache/trt",
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": "/var/cache/trt",
    }


def test_tensorrt_options_without_a_cache() -> None:
    options = provider_options(TENSORRT, trt_engine_cache_path=None, trt_fp16=False)
    assert options["trt_engine_cache_enable"] is False
    assert "trt_engine_cache_path" not in options and "trt_timing_cache_enable" not in options
    assert options["trt_fp16_enable"] is False and options["trt_int8_enable"] is False


def _graph(path: Path, qdq: bool) -> Path:
    """input -> [QuantizeLinear -> DequantizeLinear ->] Identity -> logits."""
    nodes, inits = [], []
    source = "input"
    if qdq:
        inits = [numpy_helper.from_array(np.array(0.01, np.float32), "s"),
                 numpy_helper.from_array(np.array(128, np.uint8), "z")]
        nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        source = "dq"
    nodes.append(helper.make_node("Identity", [source], ["logits"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_tensorrt_runs_a_qdq_graph_in_int8_and_a_float_one_in_fp16(tmp_path: Path) -> None:
    qdq, plain = _graph(tmp_path / "qdq.onnx", True), _graph(tmp_path / "fp.onnx", False)
    assert is_qdq_graph(qdq) and not is_qdq_graph(plain)
    chosen = dict(session_providers(qdq, [TENSORRT, CUDA, CPU], GPU_BUILD, "/cache/trt"))
    assert list(chosen) == [TENSORRT, CUDA, CPU]
    trt = chosen[TENSORRT]
    assert trt["trt_int8_enable"] is True and trt["trt_fp16_enable"] is True
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == "/cache/trt"
    assert chosen[CUDA]["cudnn_conv_algo_search"] == "HEURISTIC" and chosen[CPU] == {}
    float_trt = dict(session_providers(plain, [TENSORRT, CPU], GPU_BUILD))[TENSORRT]
    assert float_trt["trt_int8_enable"] is False and float_trt["trt_engine_cache_enable"] is False


def test_without_tensorrt_the_graph_is_not_even_read(tmp_path: Path) -> None:
    missing = tmp_path / "absent.onnx"  # reading it would fail: only a TensorRT session asks
    assert session_providers(missing, [TENSORRT, CUDA, CPU], CUDA_BUILD) == [
        (CUDA, provider_options(CUDA)), (CPU, {})
    ]
    assert session_providers(missing, None, CPU_BUILD) == [(CPU, {})]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    assert is_qdq_graph(garbage) is False  # the session that loads it next reports the real problem


def test_cpu_and_unknown_options() -> None:
    assert provider_options(CPU) == {}
    with pytest.raises(ValueError, match="known"):
        provider_options("NotAProvider")
