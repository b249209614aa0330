"""The int8 variant `make models` builds: a QDQ graph with int8 weights, served beside its float
original, answering like it on a photo the float model is sure of."""

from __future__ import annotations

import json
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto

from batchserve.loadtest.samples import SAMPLE_IMAGES
from batchserve.loadtest.server_process import ServerProcess
from batchserve.model_repo.build import BUILDERS
from batchserve.model_repo.labels import load_imagenet_labels, read_labels
from batchserve.model_repo.repository import DEFAULT_REPOSITORY, parse_model_config

INT8 = DEFAULT_REPOSITORY / "efficientnet_lite0_int8"
FP32 = DEFAULT_REPOSITORY / "efficientnet_lite0"
BUILT = INT8 / "1" / "model.onnx"
needs_built = pytest.mark.skipif(
    not (BUILT.is_file() and (FP32 / "1" / "model.onnx").is_file()),
    reason="efficientnet_lite0_int8 is not built: `make models` builds it (CI does)",
)


def test_committed_int8_directory_names_its_builder_and_variant() -> None:
    config = tomllib.loads((INT8 / "config.toml").read_text(encoding="utf-8"))
    assert config["builder"] == "efficientnet_lite0" in BUILDERS and config["variant"] == "int8"
    spec, original = parse_model_config(INT8 / "config.toml"), parse_model_config(FP32 / "config.toml")
    assert spec.name == "efficientnet_lite0_int8"
    # Served exactly like the original: the calibration fed what this preprocessing produces.
    assert spec.preprocessing == original.preprocessing
    assert (spec.input_shape, spec.classes) == (original.input_shape, original.classes)
    assert spec.execution_providers == ("CPUExecutionProvider",)
    assert read_labels(spec.labels_path) == read_labels(original.labels_path) == load_imagenet_labels()


@needs_built
def test_built_graph_is_qdq_with_int8_weights() -> None:
    model = onnx.load(str(BUILT))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("DequantizeLinear") >= 49 and ops.count("QuantizeLinear") >= 40
    assert model.graph.input[0].name == "input" and model.graph.output[0].name == "logits"
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    int8_weights = [i for i in model.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) >= 2]
    assert len(int8_weights) == 50  # 49 convolutions and the classifier
    assert BUILT.stat().st_size < 0.35 * (FP32 / "1" / "model.onnx").stat().st_size


@pytest.fixture(scope="module")
def both_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    cwd = tmp_path_factory.mktemp("int8-server")
    # A small max batch keeps the warm-up (one run at the largest batch per model) short.
    with ServerProcess(
        "--models",
        "efficientnet_lite0,efficientnet_lite0_int8",
        "--no-events",
        "--drain-delay",
        "0",
        "--max-batch-size",
        "2",
        cwd=cwd,
    ) as server:
        yield server


def classify(server: ServerProcess, model: str, photo: Path) -> dict:
    request = urllib.request.Request(
        f"{server.url}/v1/classify?model={model}",
        data=photo.read_bytes(),
        headers={"Content-Type": "image/jpeg"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


@needs_built
@pytest.mark.slow
def test_int8_answers_like_fp32_on_a_confident_photo(both_served: ServerProcess) -> None:
    coffee = SAMPLE_IMAGES / "coffee.jpg"
    fp32 = classify(both_served, "efficientnet_lite0", coffee)
    int8 = classify(both_served, "efficientnet_lite0_int8", coffee)
    assert fp32["predictions"][0]["score"] >= 0.3  # fp32 is sure: espresso
    assert int8["model"] == "efficientnet_lite0_int8" and int8["model_version"] == 1
    assert int8["predictions"][0]["class_id"] == fp32["predictions"][0]["class_id"] == 967
    assert int8["predictions"][0]["label"] == fp32["predictions"][0]["label"]
    assert abs(int8["predictions"][0]["score"] - fp32["predictions"][0]["score"]) < 0.15
    with urllib.request.urlopen(f"{both_served.url}/v1/models/efficientnet_lite0_int8", timeout=10) as response:
        info = json.load(response)
    assert info["versions"][-1]["execution_providers"] == ["CPUExecutionProvider"]
