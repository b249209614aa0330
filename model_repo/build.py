"""Build a model's ONNX file into the repository: ``<repo>/<name>/<version>/model.onnx``.

``batchserve models build NAME`` calls ``build_model``. Builders turn shipped weights (or a seed)
into a graph; the file is written atomically, so a server scanning the repository never sees a
half-written model, and two concurrent builds of the same version leave one whole file.

A model directory whose config.toml says ``variant = "int8"`` is a variant served beside its
original: the build runs its builder's float graph through the int8 recipe (quantize.py),
calibrated and then measured on disjoint halves of the photo set (calibration_photos.py), and
prints how often it agrees with the float graph.
"""

from __future__ import annotations

import os
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from batchserve.model_repo.efficientnet import INPUT_NAME, OUTPUT_NAME, emit_efficientnet_lite0, fold_efficientnet_lite0
from batchserve.model_repo.errors import ModelRepoError
from batchserve.model_repo.labels import format_labels, load_imagenet_labels
from batchserve.model_repo.repository import DEFAULT_REPOSITORY
from batchserve.model_repo.synthetic import build_tiny
from batchserve.model_repo.weights import efficientnet_lite0_weights_path, load_legacy_torch_state_dict

Progress = Callable[[str], None]
MODEL_FILE = "model.onnx"
VARIANTS: tuple[str, ...] = ("fp32", "fp16")
"""What `--variant` asks of a build: a version of the same model stored in another precision."""
CONFIG_VARIANTS: tuple[str, ...] = ("int8",)
"""What a model directory's config.toml `variant` key may name: a model of its own, built from its builder."""
_FP16_MAX = float(np.finfo(np.float16).max)


class BuildError(ModelRepoError, ValueError):
    """The build request names an unknown builder or variant, a bad version, or an unreadable config."""


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


class StepReporter:
    """Reports each build step with its duration and an optional detail line."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self.detail = ""

    @contextmanager
    def step(self, title: str) -> Iterator[StepReporter]:
        self.detail = ""
        start = time.perf_counter()
        yield self
        elapsed = time.perf_counter() - start
        detail = f": {self.detail}" if self.detail else ""
        self._progress(f"  {title}{detail} ({elapsed:.2f} s)")


@dataclass(frozen=True, slots=True)
class Builder:
    name: str
    description: str
    make_graph: Callable[[StepReporter], onnx.ModelProto]  # returns an unchecked graph
    labels: Callable[[], list[str]]


def _efficientnet_lite0(steps: StepReporter) -> onnx.ModelProto:
    path = efficientnet_lite0_weights_path()
    with steps.step("reading weights") as s:
        state = load_legacy_torch_state_dict(path)
        s.detail = f"{len(state)} tensors, {_mb(path.stat().st_size)} from {path.name}"
    with steps.step("folding BatchNorm") as s:
        folded = fold_efficientnet_lite0(state)
        s.detail = f"{len(folded.convs)} convolutions, {folded.parameter_count / 1e6:.2f} M parameters"
    with steps.step("emitting graph") as s:
        model = emit_efficientnet_lite0(folded, check=False)
        s.detail = f"{len(model.graph.node)} nodes"
    return model


def _tiny(steps: StepReporter) -> onnx.ModelProto:
    with steps.step("emitting graph (random weights, seed 0)") as s:
        model = build_tiny(seed=0, check=False)
        s.detail = f"{len(model.graph.node)} nodes"
    return model


BUILDERS: dict[str, Builder] = {
    b.name: b
    for b in (
        Builder(
            "efficientnet_lite0", "EfficientNet-Lite0, ImageNet-1k weights", _efficientnet_lite0, load_imagenet_labels
        ),
        Builder("tiny", "tiny random-weight classifier for tests", _tiny, load_imagenet_labels),
    )
}


def list_builders() -> list[str]:
    return sorted(BUILDERS)


class _BuildSettings(msgspec.Struct, frozen=True):
    """The keys of a model's config.toml that a build reads; the others are the server's business."""

    builder: str | None = None
    """None: the builder named like the model."""
    labels: str = "labels.txt"
    variant: str | None = None
    """None: the builder's float graph; "int8": that graph statically quantized."""


@dataclass(frozen=True, slots=True)
class _ModelSettings:
    builder: str
    labels: str
    variant: str | None = None


def _adopt_shipped_config(model_dir: Path, name: str, progress: Progress) -> None:
    """A model the package ships a configuration for, built into another repository, starts from
    that configuration: without it the variant (int8) would be unknown and the model unservable."""
    shipped = DEFAULT_REPOSITORY / name / "config.toml"
    target = model_dir / "config.toml"
    if target.exists() or not shipped.is_file() or model_dir.resolve() == shipped.parent.resolve():
        return
    model_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(target, shipped.read_bytes())
    progress(f"wrote {target} (the configuration batchserve ships for {name})")


def _model_settings(model_dir: Path, name: str) -> _ModelSettings:
    """Builder, labels file name and variant from the model's config.toml when there is one,
    else (name, labels.txt, no variant)."""
    config = model_dir / "config.toml"
    if not config.is_file():
        return _ModelSettings(name, "labels.txt")
    try:
        raw = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BuildError(f"cannot read {config}: {exc}") from exc
    try:
        settings = msgspec.convert(raw, _BuildSettings)
    except msgspec.ValidationError as exc:  # the message ends with the key, e.g. `$.labels`
        raise BuildError(f"{config}: {exc}") from None
    labels = settings.labels
    if not labels or Path(labels).name != labels:
        raise BuildError(f"{config}: 'labels' must be a file name inside the model directory, got {labels!r}")
    if settings.variant is not None and settings.variant not in CONFIG_VARIANTS:
        raise BuildError(
            f"{config}: unknown variant {settings.variant!r}; known variants: {', '.join(CONFIG_VARIANTS)}"
        )
    builder = name if settings.builder is None else settings.builder
    return _ModelSettings(builder, labels, settings.variant)


def convert_to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Store weights and compute in float16 while keeping a float32 ``input`` and ``logits``.

    Half the bytes to move and Tensor Core paths on GPUs; a Cast at each end keeps the serving
    contract (float32 in, float32 out) unchanged.
    """
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size and float(np.abs(values).max()) > _FP16_MAX:
            raise BuildError(f"initializer {init.name!r} exceeds the float16 range; cannot build fp16")
        graph.initializer[i].CopyFrom(numpy_helper.from_array(values.astype(np.float16), init.name))

    half_in, half_out = f"{INPUT_NAME}.fp16", f"{OUTPUT_NAME}.fp16"
    for node in graph.node:
        node.input[:] = [half_in if n == INPUT_NAME else n for n in node.input]
        node.output[:] = [half_out if n == OUTPUT_NAME else n for n in node.output]
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], [half_in], name="input.cast_fp16", to=TensorProto.FLOAT16),
        *graph.node,
        helper.make_node("Cast", [half_out], [OUTPUT_NAME], name="logits.cast_fp32", to=TensorProto.FLOAT),
    ]
    del graph.node[:]
    graph.node.extend(nodes)
    converted.doc_string = f"{model.doc_string} [fp16 weights and compute; float32 input and output]"
    return converted


def _quantize_int8(model: onnx.ModelProto, config: Path, steps: StepReporter, progress: Progress) -> onnx.ModelProto:
    """Calibrate on one half of the photo set, quantize, and print the agreement with the float
    graph on the other half; the samples are what serving feeds (the model's own preprocessing)."""
    from batchserve.model_repo.agreement import agreement, format_table
    from batchserve.model_repo.calibration_photos import CALIBRATION, EVALUATION, photos, sample_set
    from batchserve.model_repo.quantize import logits, quantize_model
    from batchserve.model_repo.repository import parse_model_config

    preprocess = parse_model_config(config).preprocessing
    with steps.step("preparing photos") as s:
        calibration = sample_set(photos(CALIBRATION), preprocess)
        evaluation = sample_set(photos(EVALUATION), preprocess)
        s.detail = (
            f"{len(calibration.photos)} photos x {len(calibration) // len(calibration.photos)} for calibration, "
            f"{len(evaluation.photos)} others x {len(evaluation) // len(evaluation.photos)} for evaluation"
        )
    with steps.step("calibrating and quantizing (QDQ, per-channel int8 weights)") as s:
        quantized, raised = quantize_model(model, calibration.tensors)
        s.detail = f"{len(quantized.graph.node)} nodes; saturation-safe scale raised on {raised:.0%} of channels"
    with steps.step("measuring agreement with the float graph") as s:
        result = agreement(logits(model, evaluation.tensors), logits(quantized, evaluation.tensors))
        s.detail = f"{result.samples} evaluation samples"
    progress(format_table(result, "int8 vs fp32 on the evaluation photos (none used for calibration):"))
    return quantized


def _write_atomically(target: Path, data: bytes) -> None:
    # Same directory as the target so os.replace is a rename within one filesystem.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_model(
    name: str,
    repo: Path,
    *,
    version: int = 1,
    variant: str = "fp32",
    if_missing: bool = False,
    progress: Progress = print,
) -> Path:
    """Build ``<repo>/<name>/<version>/model.onnx`` (and ``labels.txt`` if absent); returns the model path.

    The builder is the model's ``config.toml`` ``builder`` key, or ``name`` itself when the model
    has no config yet. With ``if_missing``, an existing file is left alone.
    """
    repo = Path(repo)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BuildError(f"version must be a positive integer, got {version!r}")
    if not name or name in {".", ".."} or Path(name).name != name or "\\" in name:
        raise BuildError(f"model name {name!r} must be a single directory name")
    if variant not in VARIANTS:
        raise BuildError(f"unknown variant {variant!r}; known variants: {', '.join(VARIANTS)}")
    model_dir = repo / name
    _adopt_shipped_config(model_dir, name, progress)
    settings = _model_settings(model_dir, name)
    builder_name, labels_file = settings.builder, settings.labels
    builder = BUILDERS.get(builder_name)
    if builder is None:
        raise BuildError(f"unknown model builder {builder_name!r}; known builders: {', '.join(list_builders())}")
    if settings.variant is not None and variant != "fp32":
        raise BuildError(
            f"{name} is the {settings.variant} variant of {builder_name} (its config.toml says so); "
            f"--variant {variant} applies to float models"
        )

    target = model_dir / str(version) / MODEL_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    labels_path = model_dir / labels_file
    if not labels_path.exists():
        labels = builder.labels()
        _write_atomically(labels_path, format_labels(labels).encode("utf-8"))
        progress(f"wrote {labels_path} ({len(labels)} labels)")
    if if_missing and target.is_file():
        progress(f"{name} version {version} is already built: {target}")
        return target

    started = time.perf_counter()
    precision = settings.variant or variant
    progress(f"building {name} version {version} ({builder.description}, {precision})")
    steps = StepReporter(progress)
    model = builder.make_graph(steps)
    if variant == "fp16":
        with steps.step("converting to fp16"):
            model = convert_to_fp16(model)
    if settings.variant == "int8":
        try:
            model = _quantize_int8(model, model_dir / "config.toml", steps, progress)
        except ModelRepoError as exc:  # missing photos, an unreadable config, the quantizer refusing the graph
            raise BuildError(f"cannot build the int8 variant {name}: {exc}") from exc
    with steps.step("checking with onnx.checker"):
        onnx.checker.check_model(model, full_check=True)
    with steps.step("writing") as s:
        data = model.SerializeToString()
        _write_atomically(target, data)
        s.detail = f"{_mb(len(data))} to {target}"
    progress(f"built {target} in {time.perf_counter() - started:.2f} s")
    return target
