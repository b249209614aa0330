"""EfficientNet-Lite0 as an ONNX graph, built with ``onnx.helper`` from an efficientnet_pytorch-style
state dict (``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``, ``_fc``).

Lite0 is EfficientNet-B0 made friendly to integer and mobile accelerators: no squeeze-excite,
ReLU6 instead of swish, and a stem and head that are not scaled. BatchNorm is folded into the
preceding convolution at build time, so the graph is only Conv, Clip, Add, pooling and one Gemm.

Padding follows TensorFlow's "same" rule (the weights were trained in TF): for stride 2 the extra
pixel goes at the bottom/right. It depends on each layer's input size, so the graph is built for
224x224 inputs with explicit pads per convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from batchserve.model_repo.errors import ModelRepoError

BN_EPS = 1e-3
IMAGE_SIZE = 224
IN_CHANNELS = 3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"


@dataclass(frozen=True, slots=True)
class StageSpec:
    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


# (repeats, kernel, stride, expand ratio, in, out) of the seven stages.
STAGES: tuple[StageSpec, ...] = tuple(
    StageSpec(*row)
    for row in (
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    )
)


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """One MBConv block: [1x1 expand] -> kxk depthwise -> 1x1 project [-> + input]."""

    index: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int

    @property
    def hidden_channels(self) -> int:
        return self.in_channels * self.expand

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def block_specs() -> list[BlockSpec]:
    """The 16 blocks in order: a stage's first block has its stride and channel change, the rest keep both."""
    blocks: list[BlockSpec] = []
    for stage in STAGES:
        for r in range(stage.repeats):
            first = r == 0
            blocks.append(
                BlockSpec(
                    index=len(blocks),
                    kernel=stage.kernel,
                    stride=stage.stride if first else 1,
                    expand=stage.expand,
                    in_channels=stage.in_channels if first else stage.out_channels,
                    out_channels=stage.out_channels,
                )
            )
    return blocks


class StateDictError(ModelRepoError, ValueError):
    """The state dict lacks a parameter the architecture needs, or has one of the wrong shape."""


@dataclass(frozen=True, slots=True)
class FoldedConv:
    """A convolution with its BatchNorm folded in: y = conv(x, weight) + bias."""

    weight: np.ndarray  # float32 [out, in/groups, k, k]
    bias: np.ndarray  # float32 [out]


@dataclass(frozen=True, slots=True)
class FoldedLite0:
    convs: dict[str, FoldedConv]  # "stem", "blocks.N.expand|depthwise|project", "head"
    fc_weight: np.ndarray  # float32 [classes, 1280]
    fc_bias: np.ndarray  # float32 [classes]

    @property
    def parameter_count(self) -> int:
        arrays = [a for c in self.convs.values() for a in (c.weight, c.bias)] + [self.fc_weight, self.fc_bias]
        return sum(a.size for a in arrays)


def _param(state: dict[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in state:
        raise StateDictError(f"state dict has no {key!r}")
    value = np.asarray(state[key])
    if value.shape != shape:
        raise StateDictError(f"{key!r} has shape {value.shape}, expected {shape}")
    if not np.all(np.isfinite(value)):
        raise StateDictError(f"{key!r} contains NaN or infinity")
    return value.astype(np.float64)


def fold_conv_bn(
    state: dict[str, np.ndarray], conv: str, bn: str, weight_shape: tuple[int, ...], eps: float = BN_EPS
) -> FoldedConv:
    """BN(conv(x)) = conv(x, W * s) + (beta - mean * s) with s = gamma / sqrt(var + eps), per output channel."""
    channels = weight_shape[0]
    weight = _param(state, f"{conv}.weight", weight_shape)
    gamma = _param(state, f"{bn}.weight", (channels,))
    beta = _param(state, f"{bn}.bias", (channels,))
    mean = _param(state, f"{bn}.running_mean", (channels,))
    var = _param(state, f"{bn}.running_var", (channels,))
    if np.any(var + eps <= 0):
        raise StateDictError(f"{bn}.running_var has values below -eps")
    scale = gamma / np.sqrt(var + eps)
    # Folding in float64 and rounding once keeps the folded graph within float32 noise of the unfused net.
    return FoldedConv(
        weight=(weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32),
        bias=(beta - mean * scale).astype(np.float32),
    )


def fold_efficientnet_lite0(state: dict[str, np.ndarray], *, num_classes: int = NUM_CLASSES) -> FoldedLite0:
    """Check every parameter's shape against the architecture and fold all BatchNorms."""
    convs = {"stem": fold_conv_bn(state, "_conv_stem", "_bn0", (STEM_CHANNELS, IN_CHANNELS, 3, 3))}
    for b in block_specs():
        prefix = f"_blocks.{b.index}"
        hidden = b.hidden_channels
        if b.expand != 1:
            convs[f"blocks.{b.index}.expand"] = fold_conv_bn(
                state, f"{prefix}._expand_conv", f"{prefix}._bn0", (hidden, b.in_channels, 1, 1)
            )
        convs[f"blocks.{b.index}.depthwise"] = fold_conv_bn(
            state, f"{prefix}._depthwise_conv", f"{prefix}._bn1", (hidden, 1, b.kernel, b.kernel)
        )
        convs[f"blocks.{b.index}.project"] = fold_conv_bn(
            state, f"{prefix}._project_conv", f"{prefix}._bn2", (b.out_channels, hidden, 1, 1)
        )
    last = block_specs()[-1].out_channels
    convs["head"] = fold_conv_bn(state, "_conv_head", "_bn1", (HEAD_CHANNELS, last, 1, 1))
    fc_weight = _param(state, "_fc.weight", (num_classes, HEAD_CHANNELS)).astype(np.float32)
    fc_bias = _param(state, "_fc.bias", (num_classes,)).astype(np.float32)
    return FoldedLite0(convs=convs, fc_weight=fc_weight, fc_bias=fc_bias)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "same" padding along one axis: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class GraphBuilder:
    """Collects nodes and initializers; each method emits one op and returns its output name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._clip_bounds: tuple[str, str] | None = None

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def conv(
        self, name: str, x: str, conv: FoldedConv, size: int, *, stride: int = 1, groups: int = 1
    ) -> tuple[str, int]:
        """A convolution with explicit TF-same pads for a square ``size``x``size`` input; returns (output, out size)."""
        kernel = conv.weight.shape[-1]
        before, after = same_padding(size, kernel, stride)
        weight = self.constant(f"{name}.weight", conv.weight)
        bias = self.constant(f"{name}.bias", conv.bias)
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, weight, bias],
                [name],
                name=name,
                kernel_shape=[kernel, kernel],
                strides=[stride, stride],
                pads=[before, before, after, after],
                group=groups,
            )
        )
        return name, (size + before + after - kernel) // stride + 1

    def relu6(self, x: str) -> str:
        if self._clip_bounds is None:
            # One shared pair of scalars; Clip takes its bounds as inputs since opset 11.
            self._clip_bounds = (
                self.constant("relu6.min", np.array(0.0, np.float32)),
                self.constant("relu6.max", np.array(6.0, np.float32)),
            )
        out = f"{x}.relu6"
        self.nodes.append(helper.make_node("Clip", [x, *self._clip_bounds], [out], name=out))
        return out

    def add(self, name: str, a: str, b: str) -> str:
        self.nodes.append(helper.make_node("Add", [a, b], [name], name=name))
        return name


def _stem(g: GraphBuilder, folded: FoldedLite0, x: str, size: int) -> tuple[str, int]:
    y, size = g.conv("stem.conv", x, folded.convs["stem"], size, stride=2)
    return g.relu6(y), size


def _mbconv(g: GraphBuilder, folded: FoldedLite0, block: BlockSpec, x: str, size: int) -> tuple[str, int]:
    name = f"blocks.{block.index}"
    y = x
    if block.expand != 1:
        y, _ = g.conv(f"{name}.expand", y, folded.convs[f"{name}.expand"], size)
        y = g.relu6(y)
    y, out_size = g.conv(
        f"{name}.depthwise",
        y,
        folded.convs[f"{name}.depthwise"],
        size,
        stride=block.stride,
        groups=block.hidden_channels,
    )
    y = g.relu6(y)
    # No activation after the projection: the block's output is a linear bottleneck.
    y, _ = g.conv(f"{name}.project", y, folded.convs[f"{name}.project"], out_size)
    if block.has_residual:
        y = g.add(f"{name}.residual", y, x)
    return y, out_size


def _head(g: GraphBuilder, folded: FoldedLite0, x: str, size: int) -> str:
    y, _ = g.conv("head.conv", x, folded.convs["head"], size)
    y = g.relu6(y)
    g.nodes.append(helper.make_node("GlobalAveragePool", [y], ["head.pool"], name="head.pool"))
    g.nodes.append(helper.make_node("Flatten", ["head.pool"], ["head.flatten"], name="head.flatten", axis=1))
    fc_weight = g.constant("fc.weight", folded.fc_weight)
    fc_bias = g.constant("fc.bias", folded.fc_bias)
    g.nodes.append(helper.make_node("Gemm", ["head.flatten", fc_weight, fc_bias], [OUTPUT_NAME], name="fc", transB=1))
    return OUTPUT_NAME


def image_classifier_io(num_classes: int) -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    """The graph input/output every model in the repository exposes: input [N,3,224,224] -> logits [N,classes]."""
    return (
        helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE]),
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, num_classes]),
    )


# Highest IR version that runtimes supporting each opset understand (onnx/docs/Versioning.md).
_IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


def make_model(
    g: GraphBuilder, graph_name: str, num_classes: int, opset: int, doc: str, *, check: bool = True
) -> onnx.ModelProto:
    inp, out = image_classifier_io(num_classes)
    graph = helper.make_graph(g.nodes, graph_name, [inp], [out], initializer=g.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="batchserve", doc_string=doc
    )
    # Pin the IR version the opset was released with, so older ONNX Runtime builds still load the file.
    model.ir_version = min(model.ir_version, _IR_FOR_OPSET.get(opset, model.ir_version))
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def emit_efficientnet_lite0(folded: FoldedLite0, *, opset: int = 17, check: bool = True) -> onnx.ModelProto:
    """Emit the ONNX graph for already-folded weights (checked with onnx.checker unless ``check`` is false)."""
    if opset < 13:
        raise ValueError(f"opset {opset} is too old: the graph needs opset 13 or newer")
    g = GraphBuilder()
    x, size = _stem(g, folded, INPUT_NAME, IMAGE_SIZE)
    for block in block_specs():
        x, size = _mbconv(g, folded, block, x, size)
    _head(g, folded, x, size)
    return make_model(
        g,
        "efficientnet_lite0",
        folded.fc_weight.shape[0],
        opset,
        "EfficientNet-Lite0, ImageNet-1k; BatchNorm folded; input (x - 127) / 128, RGB, NCHW 224x224",
        check=check,
    )

