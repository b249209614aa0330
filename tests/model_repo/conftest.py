"""Small ONNX graphs built with onnx.helper, shaped like the real classifiers (input `input`
float32 [N, 3, 224, 224], output `logits` float32 [N, classes]) but cheap enough for CPU tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


@dataclass(frozen=True)
class TinyClassifier:
    """GlobalAveragePool -> Flatten -> Gemm: logits = mean_hw(x) @ weight.T + bias, easy to check."""

    path: Path
    weight: np.ndarray  # [classes, 3]
    bias: np.ndarray  # [classes]

    def reference(self, batch: np.ndarray) -> np.ndarray:
        pooled = batch.astype(np.float64).mean(axis=(2, 3))
        return (pooled @ self.weight.T.astype(np.float64) + self.bias).astype(np.float32)


def build_classifier(
    path: Path,
    *,
    classes: int | str = 1000,
    input_name: str = "input",
    output_name: str = "logits",
    batch: int | str = "batch",
    seed: int = 0,
) -> TinyClassifier:
    """Save a tiny classifier graph; `classes` as a string makes the class dimension symbolic,
    `batch` as an int fixes the batch size."""
    n_classes = 10 if isinstance(classes, str) else classes
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((n_classes, 3)).astype(np.float32)
    bias = rng.standard_normal(n_classes).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", [input_name], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weight", "bias"], [output_name], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, classes])],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return TinyClassifier(path, weight, bias)


def build_conv_classifier(path: Path, classes: int = 1000) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: a CNN's shape in miniature."""
    rng = np.random.default_rng(1)
    conv_w = (rng.standard_normal((8, 3, 8, 8)) * 0.05).astype(np.float32)
    fc_w = rng.standard_normal((classes, 8)).astype(np.float32)
    fc_b = np.zeros(classes, dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["conv"], strides=[8, 8]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((conv_w, "conv_w"), (fc_w, "fc_w"), (fc_b, "fc_b"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> TinyClassifier:
    # The repository layout <repo>/<model>/<version>/model.onnx, as the server would load it.
    return build_classifier(tmp_path_factory.mktemp("repo") / "tiny" / "1" / "model.onnx")


@pytest.fixture(scope="session")
def conv_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_conv_classifier(tmp_path_factory.mktemp("repo") / "tinycnn" / "1" / "model.onnx")


@pytest.fixture(scope="session")
def make_classifier():
    """build_classifier itself, for tests that need a graph with other names or shapes."""
    return build_classifier
