"""Static int8 quantization of a float classifier graph: QDQ format, per-channel int8 weights,
uint8 activations, with ONNX Runtime's quantizer doing the graph rewriting.

What ONNX Runtime's own calibrators would do is not used as is; each choice below was measured
on this project's photos (docs/int8.md holds the trials and their numbers):

1. Activation ranges: for every tensor, the clipping range that minimises the mean squared
   quantization error over a sample of its calibration values (a grid search between 20 % and
   100 % of the observed extremes). Better than MinMax (outliers stretch the steps) and than
   fixed percentiles (which clip ReLU6 outputs piled up at 6), and far faster than ONNX
   Runtime's histogram calibrators (seconds instead of minutes on two cores).
2. Bias correction: rounding the weights of a channel shifts that channel's output by a
   constant on average (sum of the weight errors times the mean input); that shift is
   subtracted from the float bias before quantizing. EfficientNet's depthwise and 1x1 layers
   are very sensitive to it: +9 points of top-1 agreement.
3. Saturation-safe weight scales. x86 CPUs without VNNI (AVX2, and AVX-512 without VNNI)
   multiply uint8 activations by int8 weights with VPMADDUBSW, which adds two neighbouring
   products into a signed 16-bit lane and saturates it: 255 x 127 x 2 overflows 32767. ONNX
   Runtime's remedy, `reduce_range` (7-bit weights), costs too much precision here, and
   keeping 8 bits lost 20 points of agreement on such a CPU. So each output channel's scale is
   raised only as far as needed for every same-sign pair of neighbouring input-channel weights
   to sum to at most 128 codes (255 x 128 < 32768): no sum can overflow, most channels keep
   nearly all of their 8 bits, and the graph gives the same answers on every x86 CPU. The
   depthwise convolutions run in a kernel that widens before adding, so they keep plain scales.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from batchserve.model_repo.errors import ModelRepoError

WEIGHT_QMAX = 127
PAIR_LIMIT = 128
"""Largest code sum of a same-sign weight pair: 255 x 128 = 32640 fits a signed 16-bit lane."""
_UINT8_LEVELS = 255
# The ops whose outputs carry quantized activations in ONNX Runtime's QDQ graph of this model.
_ACTIVATION_OPS = frozenset({"Conv", "Gemm", "Clip", "Relu", "Add", "GlobalAveragePool", "Flatten", "AveragePool"})
_WEIGHTED_OPS = frozenset({"Conv", "Gemm"})


class QuantizationError(ModelRepoError, RuntimeError):
    """The graph has a shape the recipe does not handle, or ONNX Runtime's quantizer failed."""


@dataclass(frozen=True, slots=True)
class Int8Recipe:
    """The measured choices (see the module doc); the defaults are what the build uses."""

    range_candidates: int = 81
    """Clipping ranges tried per tensor, evenly from `min_range_fraction` to 1 of the extremes."""
    min_range_fraction: float = 0.2
    sampled_values: int = 100_000
    """Values kept per tensor (the same share from every calibration batch) for the range search."""
    bias_correction: bool = True
    saturation_safe: bool = True
    float_logits: bool = True
    batch_size: int = 16
    """Calibration batch: bounds the memory of the run that records every intermediate tensor."""
    seed: int = 0


RECIPE = Int8Recipe()


@dataclass
class TensorStats:
    lowest: float = float("inf")
    highest: float = float("-inf")
    chunks: list[np.ndarray] = field(default_factory=list)

    @property
    def values(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(1, np.float32)


@dataclass
class Statistics:
    tensors: dict[str, TensorStats]
    channel_means: dict[str, np.ndarray]
    """Mean of every weighted layer's input, per channel (for bias correction)."""


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """The graph input and every output of the ops whose results are quantized."""
    names = [i.name for i in model.graph.input]
    for node in model.graph.node:
        if node.op_type in _ACTIVATION_OPS:
            names.extend(node.output)
    return list(dict.fromkeys(names))


def _weighted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in _WEIGHTED_OPS]


def _session(model: onnx.ModelProto, optimize: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        # Calibration needs every intermediate tensor as the float graph defines it; fusions
        # would rename or drop some of them.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def collect_statistics(
    model: onnx.ModelProto, batches: Iterable[np.ndarray], total: int, recipe: Int8Recipe = RECIPE
) -> Statistics:
    """One pass of the float graph over the calibration batches (`total` samples in all), recording
    each activation's extremes, a random sample of its values (the same share from every batch),
    and the per-channel means of each weighted layer's input."""
    input_name = model.graph.input[0].name
    names = activation_tensors(model)
    layer_inputs = [n.input[0] for n in _weighted_nodes(model)]
    wanted = [n for n in dict.fromkeys([*names, *layer_inputs]) if n != input_name]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in wanted if n not in existing)
    session = _session(probe, optimize=False)
    outputs = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(recipe.seed)
    stats = {n: TensorStats() for n in names}
    sums: dict[str, np.ndarray] = {}
    for batch in batches:
        values = dict(zip(outputs, session.run(outputs, {input_name: batch}), strict=True))
        values[input_name] = batch
        share = max(1, recipe.sampled_values * len(batch) // max(total, 1))
        for name, s in stats.items():
            flat = values[name].reshape(-1)
            s.lowest = min(s.lowest, float(flat.min()))
            s.highest = max(s.highest, float(flat.max()))
            s.chunks.append(flat[rng.integers(0, flat.size, min(share, flat.size))])
        for name in layer_inputs:
            v = values[name].astype(np.float64)
            batch_mean = v.mean(axis=(0, 2, 3)) if v.ndim == 4 else v.mean(axis=0)
            sums[name] = sums.get(name, 0.0) + batch_mean * len(batch)
    return Statistics(stats, {name: s / max(total, 1) for name, s in sums.items()})


def quantization_mse(values: np.ndarray, lowest: float, highest: float) -> float:
    """Mean squared error of uint8 asymmetric quantization with the range [lowest, highest]
    (widened to hold zero, as ONNX Runtime does)."""
    lowest, highest = min(lowest, 0.0), max(highest, 0.0)
    if highest <= lowest:
        return 0.0
    scale = (highest - lowest) / _UINT8_LEVELS
    zero = np.round(-lowest / scale)
    codes = np.clip(np.round(values / scale) + zero, 0, _UINT8_LEVELS)
    return float(np.mean((values - (codes - zero) * scale) ** 2))


def clipping_range(stats: TensorStats, recipe: Int8Recipe = RECIPE) -> tuple[float, float]:
    """The (lowest, highest) pair with the least quantization error on the sampled values; both
    ends shrink together (a tensor that never goes below zero keeps its zero)."""
    values = stats.values.astype(np.float64)
    best = (np.inf, stats.lowest, stats.highest)
    for fraction in np.linspace(recipe.min_range_fraction, 1.0, recipe.range_candidates):
        lo = stats.lowest * fraction if stats.lowest < 0 else stats.lowest
        hi = stats.highest * fraction if stats.highest > 0 else stats.highest
        error = quantization_mse(values, lo, hi)
        if error < best[0]:
            best = (error, lo, hi)
    return best[1], best[2]


def saturation_safe_codes(weight: np.ndarray, limit: int = PAIR_LIMIT) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 codes and scales such that, along the input channels
    (axis 1, at each kernel position), no same-sign pair (2i, 2i+1) sums beyond `limit` codes.

    A channel's scale is max(absmax / 127, largest same-sign pair sum / limit); a pair that
    rounding still takes one code over the limit loses that code on its larger element."""
    out_channels, in_channels = weight.shape[0], weight.shape[1]
    w = weight.reshape(out_channels, in_channels, -1).astype(np.float64)
    scale = np.abs(w).max(axis=(1, 2)) / WEIGHT_QMAX
    if in_channels >= 2:
        even, odd = w[:, 0 : in_channels - 1 : 2, :], w[:, 1:in_channels:2, :]
        positive = np.maximum(even, 0) + np.maximum(odd, 0)
        negative = np.maximum(-even, 0) + np.maximum(-odd, 0)
        scale = np.maximum(scale, np.maximum(positive, negative).max(axis=(1, 2)) / limit)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.round(w / scale.astype(np.float64)[:, None, None]), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int32)
    for i in range(0, in_channels - 1, 2):
        a, b = codes[:, i, :], codes[:, i + 1, :]
        for sign in (1, -1):
            excess = np.maximum(sign * a, 0) + np.maximum(sign * b, 0) - limit
            over = excess > 0
            if over.any():
                a_larger = np.abs(a) >= np.abs(b)
                a[:] = np.where(over & a_larger, a - sign * excess, a)
                b[:] = np.where(over & ~a_larger, b - sign * excess, b)
    return codes.reshape(weight.shape), scale


def plain_codes(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 codes and scales, as ONNX Runtime computes them."""
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    scale = (np.abs(flat).max(axis=1) / WEIGHT_QMAX).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0))
    codes = np.clip(np.round(flat / scale.astype(np.float64)[:, None]), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int32)
    return codes.reshape(weight.shape), scale


def _is_depthwise(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return node.op_type == "Conv" and group > 1 and weight.shape[1] == 1


def _gemm_weight_is_out_by_in(node: onnx.NodeProto) -> bool:
    return node.op_type == "Conv" or any(a.name == "transB" and a.i == 1 for a in node.attribute)


@dataclass(frozen=True)
class PreparedWeights:
    model: onnx.ModelProto
    """The float graph with weights that int8 represents exactly and corrected biases."""
    overrides: dict[str, list[dict[str, Any]]]
    """ONNX Runtime TensorQuantOverrides fixing each weight's per-channel scales."""
    raised_channels: float
    """Fraction of the non-depthwise channels whose scale the saturation rule raised."""


def prepare_weights(model: onnx.ModelProto, stats: Statistics, recipe: Int8Recipe = RECIPE) -> PreparedWeights:
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    initializers = {i.name: i for i in prepared.graph.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    raised, counted = 0, 0
    for node in _weighted_nodes(prepared):
        if node.input[1] not in initializers:
            raise QuantizationError(f"{node.op_type} {node.name!r} needs constant weights")
        if len(node.input) < 3 or not node.input[2]:
            # Bias correction needs a bias to correct: a layer without one gets zeros.
            channels = numpy_helper.to_array(initializers[node.input[1]]).shape[0]
            zeros = numpy_helper.from_array(np.zeros(channels, np.float32), f"{node.input[1]}.bias")
            prepared.graph.initializer.append(zeros)
            initializers[zeros.name] = prepared.graph.initializer[-1]
            del node.input[2:]
            node.input.append(zeros.name)
        if node.input[2] not in initializers:
            raise QuantizationError(f"{node.op_type} {node.name!r} needs a constant bias")
        if not _gemm_weight_is_out_by_in(node):
            raise QuantizationError(f"Gemm {node.name!r} must have transB=1 (weights [out, in])")
        weight = numpy_helper.to_array(initializers[node.input[1]])
        bias = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64)
        if recipe.saturation_safe and not _is_depthwise(node, weight):
            codes, scale = saturation_safe_codes(weight)
            plain = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1) / WEIGHT_QMAX
            raised += int(np.sum(scale > plain * (1 + 1e-6)))
            counted += len(scale)
        else:
            codes, scale = plain_codes(weight)
        shape = (-1,) + (1,) * (weight.ndim - 1)
        exact = (codes * scale.reshape(shape)).astype(np.float32)
        if recipe.bias_correction:
            # The mean input per channel stands for the mean under every kernel tap (padding at
            # the borders is ignored): the shift is the weight error summed over the taps times it.
            error = (exact.astype(np.float64) - weight.astype(np.float64)).reshape(weight.shape[0], weight.shape[1], -1)
            mean_in = stats.channel_means[node.input[0]]
            per_input = error.sum(axis=2)  # [out, in/groups]
            shift = per_input[:, 0] * mean_in if _is_depthwise(node, weight) else per_input @ mean_in
            bias = bias - shift
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(exact, node.input[1]))
        initializers[node.input[2]].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), node.input[2]))
        overrides[node.input[1]] = [
            {"axis": 0, "scale": np.array(s, dtype=np.float32), "zero_point": np.array(0, dtype=np.int8)} for s in scale
        ]
    return PreparedWeights(prepared, overrides, raised / counted if counted else 0.0)


class _DropPreprocessingAdvice(logging.Filter):
    """ONNX Runtime's quantizer logs advice to run its `quant_pre_process` first on every call;
    measured here, it changed nothing (docs/int8.md), so the advice is only noise in a build."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage() and "pre-processing" not in record.getMessage()


@contextmanager
def _quiet_advice() -> Iterator[None]:
    root, advice = logging.getLogger(), _DropPreprocessingAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


class _FewSamples:
    """A calibration reader for ONNX Runtime's quantizer, which insists on one: every range is
    fixed by an override, so a couple of samples only satisfy its bookkeeping."""

    def __init__(self, input_name: str, batch: np.ndarray) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter([{input_name: batch}])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_model(
    model: onnx.ModelProto, calibration: np.ndarray, recipe: Int8Recipe = RECIPE
) -> tuple[onnx.ModelProto, float]:
    """The QDQ int8 graph of a float graph, calibrated on `calibration` (float32 [N, ...] model
    inputs, exactly as served). Returns it with the fraction of channels whose scale was raised."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if len(calibration) == 0:
        raise QuantizationError("no calibration samples")
    batches = (calibration[i : i + recipe.batch_size] for i in range(0, len(calibration), recipe.batch_size))
    stats = collect_statistics(model, batches, len(calibration), recipe)
    prepared = prepare_weights(model, stats, recipe)
    ranges: dict[str, list[dict[str, Any]]] = {}
    for name, s in stats.tensors.items():
        lo, hi = clipping_range(s, recipe)
        ranges[name] = [{"rmin": np.array(lo, dtype=np.float32), "rmax": np.array(hi, dtype=np.float32)}]
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="batchserve-int8-") as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(prepared.model, str(source))
        with _quiet_advice():
            try:
                quantize_static(
                    str(source),
                    str(target),
                    _FewSamples(input_name, calibration[:2]),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={
                        "TensorQuantOverrides": {**ranges, **prepared.overrides},
                        # The classifier's output stays float: 256 levels over the logit range would
                        # tie close classes (measured: one more confident sample agreeing, no cost).
                        "OpTypesToExcludeOutputQuantization": ["Gemm"] if recipe.float_logits else [],
                    },
                )
            except (ValueError, RuntimeError, KeyError) as exc:
                raise QuantizationError(f"ONNX Runtime's quantizer failed: {exc}") from exc
        quantized = onnx.load(str(target))
    return quantized, prepared.raised_channels


def logits(model: onnx.ModelProto, inputs: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The graph's outputs on `inputs`, batch by batch, with ONNX Runtime's CPU kernels (the
    ones the agreement must be measured with: they are what serving runs)."""
    session = _session(model)
    input_name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {input_name: inputs[i : i + batch_size]})[0] for i in range(0, len(inputs), batch_size)]
    )
