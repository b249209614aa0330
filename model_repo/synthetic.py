"""A tiny random-weight image classifier with the same interface as the real models.

Input ``input`` float32 [N,3,224,224], output ``logits`` float32 [N,1000], like EfficientNet-Lite0,
but a few hundred times cheaper: tests and benchmarks of the serving path use it where the
model's accuracy does not matter. Weights come from a seeded generator, so a seed always gives
the same graph byte for byte.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from batchserve.model_repo.efficientnet import (
    IMAGE_SIZE,
    IN_CHANNELS,
    INPUT_NAME,
    NUM_CLASSES,
    OUTPUT_NAME,
    FoldedConv,
    GraphBuilder,
    make_model,
)

STEM_CHANNELS = 16
BLOCK_CHANNELS = 32


def _random_conv(rng: np.random.Generator, out_ch: int, in_per_group: int, kernel: int) -> FoldedConv:
    # He-style scaling keeps activations O(1) so ReLU6 neither saturates nor dies, and the logits
    # spread out enough for top-k order to be meaningful.
    fan_in = in_per_group * kernel * kernel
    weight = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(out_ch, in_per_group, kernel, kernel))
    bias = rng.normal(0.0, 0.1, size=(out_ch,))
    return FoldedConv(weight.astype(np.float32), bias.astype(np.float32))


def build_tiny(
    seed: int = 0, *, num_classes: int = NUM_CLASSES, opset: int = 17, check: bool = True
) -> onnx.ModelProto:
    """Strided stem conv -> depthwise 3x3 -> pointwise -> global average pool -> Gemm, random weights."""
    rng = np.random.default_rng(seed)
    g = GraphBuilder()
    x, size = g.conv("stem.conv", INPUT_NAME, _random_conv(rng, STEM_CHANNELS, IN_CHANNELS, 4), IMAGE_SIZE, stride=4)
    x = g.relu6(x)
    x, size = g.conv("block.depthwise", x, _random_conv(rng, STEM_CHANNELS, 1, 3), size, stride=2, groups=STEM_CHANNELS)
    x = g.relu6(x)
    x, size = g.conv("block.project", x, _random_conv(rng, BLOCK_CHANNELS, STEM_CHANNELS, 1), size)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["head.pool"], name="head.pool"))
    g.nodes.append(helper.make_node("Flatten", ["head.pool"], ["head.flatten"], name="head.flatten", axis=1))
    fc_weight = g.constant("fc.weight", rng.normal(0.0, 1.0, size=(num_classes, BLOCK_CHANNELS)).astype(np.float32))
    fc_bias = g.constant("fc.bias", rng.normal(0.0, 0.1, size=(num_classes,)).astype(np.float32))
    g.nodes.append(helper.make_node("Gemm", ["head.flatten", fc_weight, fc_bias], [OUTPUT_NAME], name="fc", transB=1))
    return make_model(
        g, "tiny", num_classes, opset, f"random-weight test classifier (seed {seed}); not trained", check=check
    )
