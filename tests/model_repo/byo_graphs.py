"""Foreign classifier graphs for `models add` tests, built with onnx.helper: the mean of each input
channel times a fixed weight matrix, so which class wins is known from an image's colours.

With the identity weights and labels "red", "green", "blue", the answer is the colour of the
channel the model sees as largest: "red" for a reddish photo fed RGB, "blue" fed BGR.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from batchserve.loadtest.samples import SAMPLE_IMAGES

OPSET = 17
RGB_LABELS = ("red", "green", "blue")
# Centre crops' mean colours: chelsea and coffee are reddest, rocket bluest (by 24-75 grey levels).
CHELSEA = SAMPLE_IMAGES / "chelsea.jpg"
ROCKET = SAMPLE_IMAGES / "rocket.jpg"
COFFEE = SAMPLE_IMAGES / "coffee.jpg"

Dims = Sequence[int | str]


def channel_mean_classifier(
    path: Path,
    *,
    shape: Dims = ("N", 3, 224, 224),
    layout: str = "NCHW",
    weight: np.ndarray | None = None,
    input_name: str = "pixels",
    output_name: str = "scores",
    output_shape: Dims | None = None,
    softmax: bool = False,
    input_type: int = TensorProto.FLOAT,
) -> Path:
    """scores = mean_hw(x) @ weight.T (weight [classes, 3], identity by default), optionally softmaxed."""
    weight = np.eye(3, dtype=np.float32) if weight is None else weight.astype(np.float32)
    nodes = []
    x = input_name
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["as_float"], to=TensorProto.FLOAT))
        x = "as_float"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [x], ["channels_first"], perm=[0, 3, 1, 2]))
        x = "channels_first"
    logits = "logits" if softmax else output_name
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "weight"], [logits], transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", [logits], [output_name], axis=-1))
    batch = shape[0]
    graph = helper.make_graph(
        nodes, "channel_mean_classifier",
        [helper.make_tensor_value_info(input_name, input_type, list(shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                       list(output_shape) if output_shape is not None else [batch, weight.shape[0]])],
        initializer=[numpy_helper.from_array(weight, "weight")],
    )
    return save(graph, path)


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def labels_file(path: Path, labels: Sequence[str] = RGB_LABELS) -> Path:
    path.write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
    return path
